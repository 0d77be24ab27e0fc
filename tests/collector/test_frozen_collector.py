"""A collector that keeps its connections open but answers nothing (stopped with SIGSTOP, or stuck on its
database) holds its agents only a few seconds: they move to another collector, and their scans go on
being stored there."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from sockfleet.agent.stream import KEEPALIVE_TIME, PING_TIMEOUT, ack_wait
from tests import postgres
from tests.collector.harness import Agent, Collector, ask, wait_for

HOST = "frozen-peer"
INTERVAL = 1.0  # seconds between the agent's scans
# A heartbeat waits for its Ack max(3 intervals, 10 s) (agent.stream.ack_wait); then come the backoff
# (0.5 to 1.5 s), a new stream, its snapshot and the spooled scans.  Far less than a minute.
BOUND = 10 * INTERVAL + 10


@dataclass
class Pair:
    """Two collectors (on SQLite files of their own, or one PostgreSQL database) and one agent given both:
    the collector it streams to (``first``), the other, and where the agent's log goes."""

    first: Collector
    other: Collector
    log: Path

    def moved(self, bound: float = BOUND) -> float:
        """Seconds until the other collector acknowledges the agent's scans (the agent says so once it has
        its first answer); the test fails after ``bound``.  Then the other collector stores the scans taken
        from now on."""
        began, moment = time.monotonic(), datetime.now(UTC)
        answered = f"connected to the collector at 127.0.0.1:{self.other.port}"
        before = self.log.read_text().count(answered)
        try:
            wait_for(lambda: self.log.read_text().count(answered) > before, "an Ack from the other collector", bound)
        except pytest.fail.Exception:
            pytest.fail(f"no Ack from the other collector within {bound:g} s; the agent said:\n{self.log.read_text()}")
        took = time.monotonic() - began
        wait_for(lambda: stored_since(self.other, moment), "the scans taken since on the other collector", 60)
        return took

    def left(self) -> str:
        """The agent's line on leaving the first collector, which must say why."""
        said = self.log.read_text()
        leaving = re.search(rf".*no answer within \d+ s from the collector at 127\.0\.0\.1:{self.first.port}\b.*", said)
        assert leaving, said
        assert f"next: the collector at 127.0.0.1:{self.other.port}" in leaving.group(0), said
        return leaving.group(0)


def stored_since(collector: Collector, moment: datetime) -> bool:
    """Whether ``collector``'s database holds a scan of the host taken at or after ``moment`` (on a shared
    database, only the collector that is not stopped can have stored it)."""
    hosts = json.loads(ask(collector.db_url, "hosts", "--format", "json").stdout)
    seen = [datetime.fromisoformat(h["last_seen"].replace("Z", "+00:00")) for h in hosts if h["host"] == HOST]
    return bool(seen) and seen[0] >= moment


def streaming_to(collectors: list[Collector]) -> Collector | None:
    """The collector the agent streams to now, by what the collectors logged."""
    for collector in collectors:
        said = collector.said()
        if said.rfind(f"host {HOST} ({HOST}) connected") > said.rfind(f"host {HOST} ({HOST}) disconnected"):
            return collector
    return None


@contextmanager
def pair(tmp_path: Path, interval: float = INTERVAL, shared: str | None = None) -> Iterator[Pair]:
    """Two collectors on SQLite files of their own, or on the ``shared`` PostgreSQL database, and the agent."""
    collectors = [Collector(shared or f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db")]
    log = tmp_path / "agent.log"
    every = ",".join(f"127.0.0.1:{c.port}" for c in collectors)
    agent = Agent(every, HOST, interval=f"{interval:g}s", log=log)
    try:
        wait_for(lambda: streaming_to(collectors) is not None, "the agent's first stream", 60)
        first = streaming_to(collectors)
        assert first is not None
        began = datetime.now(UTC)
        wait_for(lambda: stored_since(first, began), "a scan on the first collector", 60 + interval)
        yield Pair(first, collectors[1] if first is collectors[0] else collectors[0], log)
    finally:
        agent.stop()
        for collector in collectors:
            collector.stop(signal.SIGKILL)  # the first one may still wait for its database


def test_an_agent_leaves_a_stopped_collector_within_a_few_intervals(tmp_path: Path) -> None:
    with pair(tmp_path) as running:
        running.first.proc.send_signal(signal.SIGSTOP)  # its sockets stay open; nothing answers on them
        try:
            moved = running.moved()
        finally:
            running.first.proc.send_signal(signal.SIGCONT)
    print(f"stopped collector: on the other one after {moved:.1f} s: {running.left()}")


@pytest.mark.skipif(postgres.binaries() is None, reason="PostgreSQL binaries are not installed")
def test_an_agent_leaves_a_stopped_collector_of_a_shared_database(pg_cluster: postgres.Cluster, tmp_path: Path) -> None:
    # The stopped collector's claim on the host lapses 3 intervals after its last message (at least 2 s):
    # until then the other collector refuses the host, and the agent tries again after its backoff.
    db_url = pg_cluster.database()
    ask(db_url, "collector", "migrate")
    with pair(tmp_path, shared=db_url) as running:
        running.first.proc.send_signal(signal.SIGSTOP)
        try:
            moved = running.moved()
        finally:
            running.first.proc.send_signal(signal.SIGCONT)
    print(f"stopped collector, shared database: on the other one after {moved:.1f} s: {running.left()}")


@pytest.mark.skipif(postgres.binaries() is None, reason="PostgreSQL binaries are not installed")
def test_an_agent_leaves_a_collector_stopped_inside_a_transaction_of_a_shared_database(
    pg_cluster: postgres.Cluster, tmp_path: Path
) -> None:
    # A collector stopped while its message's transaction holds the host's row: the other collector cannot take
    # the host until the database ends the stopped collector's session, idle inside its transaction (10 s, as
    # long as the agent waits for an Ack).  The first statement of a message's transaction was sent in a
    # pipeline with its BEGIN, whose closing flush left such a session with no idle timer: held for good.
    db_url = pg_cluster.database()
    ask(db_url, "collector", "migrate")
    with pair(tmp_path, shared=db_url) as running:
        watcher = create_engine(db_url, isolation_level="AUTOCOMMIT")
        try:
            with watcher.connect() as lock:
                # The next message's transaction waits for the host's row, is stopped there, then gets it.
                lock.exec_driver_sql("BEGIN; SELECT 1 FROM host_state FOR UPDATE")
                wait_for(lambda: waiting_for_a_lock(watcher), "the collector's message waiting for its host", 30)
                running.first.proc.send_signal(signal.SIGSTOP)
                time.sleep(0.2)  # the signal lands before the statement can end
                lock.exec_driver_sql("ROLLBACK")
            try:
                moved = running.moved()
            finally:
                running.first.proc.send_signal(signal.SIGCONT)
            # Woken, the first collector finds its session ended and the agent gone, and says so in a line.
            wait_for(lambda: f"host {HOST} ({HOST}) disconnected" in running.first.said(), "the stream's end", 30)
            assert "Traceback" not in running.first.said(), running.first.said()
        finally:
            watcher.dispose()
    print(f"collector stopped inside a transaction: on the other one after {moved:.1f} s: {running.left()}")


def waiting_for_a_lock(engine: Engine) -> bool:
    """Whether a session of ``engine``'s database waits for a lock."""
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).scalar_one()
    return bool(waiting)


def test_an_agent_leaves_a_collector_stuck_on_its_database_within_a_few_intervals(tmp_path: Path) -> None:
    with pair(tmp_path) as running:
        # The collector waits 30 s for a locked SQLite file; meanwhile it answers HTTP/2 pings, but no scan.
        database = sqlite3.connect(running.first.db_url.removeprefix("sqlite:///"), timeout=10)
        try:
            database.execute("BEGIN EXCLUSIVE")
            moved = running.moved()
        finally:
            database.rollback()
            database.close()
    print(f"stuck collector: on the other one after {moved:.1f} s: {running.left()}")


def test_an_agent_on_a_long_interval_leaves_a_stopped_collector_when_it_answers_no_ping(tmp_path: Path) -> None:
    interval = 10.0  # its next heartbeat would wait 30 s for an Ack: the pings tell sooner
    with pair(tmp_path, interval) as running:
        running.first.proc.send_signal(signal.SIGSTOP)
        try:
            moved = running.moved(KEEPALIVE_TIME + PING_TIMEOUT + 10)
        finally:
            running.first.proc.send_signal(signal.SIGCONT)
    leaving = running.left()
    assert "not even to HTTP/2 pings" in leaving, leaving
    print(f"stopped collector, {interval:g} s interval: on the other one after {moved:.1f} s: {leaving}")


def test_the_wait_for_an_ack_grows_with_the_interval_and_the_message() -> None:
    assert ack_wait(1, 0, snapshot=False) == 10  # a heartbeat every second: 10 s
    assert ack_wait(15, 0, snapshot=False) == 45  # the default interval: the host's claim lapses then
    assert ack_wait(1, 2_000, snapshot=False) == 12  # a delta of many sockets
    assert ack_wait(15, 500, snapshot=True) == 60.5  # a full snapshot, which may queue behind every host's
    assert ack_wait(15, 1_000_000, snapshot=True) == 1060  # a million sockets: applied in steps, for minutes
