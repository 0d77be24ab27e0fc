"""Days of a small fleet's history, written through the collector's store, and the questions asked of it.

Three hosts scan every hour: web-1 calls db-1's PostgreSQL on a new connection each hour (each lives two
hours, and the connections that closed between two scans come as closed flows), web-1's 8080 listener
changes owner every day, and cache-1's UDP listener closes for an hour every 30 hours.  cache-1 reports
scans it dropped once, and web-1 events its kernel lost, so that what hosts count is history too.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text

from sockfleet.collector import convert
from sockfleet.collector.store import Store
from sockfleet.collector.times import rfc3339
from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.fleet import NETNS, inet
from tests.collector.harness import ENV, sockfleet
from tests.conftest import ROOT

HOUR = timedelta(hours=1)
ADDRESSES = {"web-1": "10.0.0.1", "db-1": "10.0.0.2", "cache-1": "10.0.0.3"}


# What each message writes about its host, on ``hosts`` in the previous release's schema and in ``host_state``
# since migration 0019 (with the lease of migration 0016).
STATE_COLUMNS = ("epoch", "seq", "last_taken_at", "complete", "first_seen", "last_seen")
HOST_STATE = (
    "CREATE TABLE host_state (host_ref INTEGER PRIMARY KEY, epoch BIGINT NOT NULL, seq BIGINT NOT NULL, "
    "last_taken_at TIMESTAMP, complete BOOLEAN NOT NULL, first_seen TIMESTAMP NOT NULL, last_seen TIMESTAMP NOT NULL, "
    "lease BIGINT NOT NULL DEFAULT 0, lease_holder VARCHAR(255), lease_until TIMESTAMP)"
)


def sockets_of(host: str, hour: int) -> list[pb.Socket]:
    """What ``host`` holds open at scan ``hour``."""
    calls = [k for k in (hour - 1, hour) if k >= 0]  # each connection lives two scans
    if host == "web-1":
        owner = "java" if (hour // 24) % 2 == 0 else "jetty"
        found = [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"), inet("tcp", "0.0.0.0", 8080, None, 0, 2, owner)]
        return found + [inet("tcp", "10.0.0.1", 40000 + k, "10.0.0.2", 5432, 1000 + k, "app") for k in calls]
    if host == "db-1":
        found = [inet("tcp", "0.0.0.0", 5432, None, 0, 1, "postgres")]
        return found + [inet("tcp", "10.0.0.2", 5432, "10.0.0.1", 40000 + k, 5000 + k, "postgres") for k in calls]
    found = [fleet.unix_listener("/run/cache.sock", 7)]
    if hour % 30 != 29:
        found.append(inet("udp", "0.0.0.0", 11211, None, 0, 3, "memcached"))
    return found


def _closings(moment: datetime, hour: int) -> pb.Closings:
    """web-1's short calls to db-1 that closed since the previous scan."""
    return fleet.closed_calls(moment, hour % 3 + 1, 1, 100 * hour, 300 * hour, lost=1 if hour == 7 else 0)


def _coverage(moment: datetime, dropped: bool) -> pb.Coverage:
    gaps = [pb.Gap(from_us=fleet.us(moment - HOUR * 3), to_us=fleet.us(moment - HOUR), reason="spool full")]
    return pb.Coverage(
        sources=[pb.SourceStatus(source="netlink", netns=NETNS, ok=True, records=3)],
        namespaces_scanned=[NETNS],
        gaps=gaps if dropped else [],
    )


class AgedFleet:
    """The fleet's scans from ``start``, one an hour, applied ``hours`` at a time (``advance``)."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.hour = 0
        self.refs: dict[str, int] = {}

    def moment(self, hour: float) -> datetime:
        return self.start + hour * HOUR

    def advance(self, engine: Engine, hours: int) -> None:
        store = Store(engine)
        for name, address in ADDRESSES.items():  # a hello at each (re)connection, as an agent does
            self.refs[name] = store.hello(convert.greeting(fleet.hello(name, 3600, (address,))))
        for hour in range(self.hour, self.hour + hours):
            for name, ref in self.refs.items():
                outcome = store.apply(ref, convert.scan(self._message(name, hour)))
                assert outcome.acked, outcome
        self.hour += hours

    def advance_at_release_schema(self, engine: Engine, hours: int) -> None:
        """``advance`` on a database at the previous release's schema.  Today's store keeps what each message
        writes about a host in ``host_state``, which that schema lacks: the hosts are recorded there first (as
        a hello of that release did), their state is copied to a ``host_state`` while the store writes, and
        copied back before it goes."""
        columns = ", ".join(STATE_COLUMNS)
        with engine.begin() as conn:
            for name in ADDRESSES:
                fields = convert.greeting(fleet.hello(name, 3600)).fields
                known = conn.execute(text("SELECT 1 FROM hosts WHERE host_id = :host_id"), fields).first()
                if known is None:
                    conn.execute(
                        text(
                            "INSERT INTO hosts (host_id, name, agent_version, boot_id, interval_seconds, "
                            f"{columns}) VALUES (:host_id, :name, :agent_version, :boot_id, :interval_seconds, "
                            "0, 0, NULL, true, :now, :now)"
                        ),
                        {**fields, "now": convert.now()},
                    )
            conn.execute(text(HOST_STATE))
            conn.execute(text(f"INSERT INTO host_state (host_ref, {columns}) SELECT id, {columns} FROM hosts"))
        self.advance(engine, hours)
        with engine.begin() as conn:
            copied = ", ".join(
                f"{c} = (SELECT s.{c} FROM host_state s WHERE s.host_ref = hosts.id)" for c in STATE_COLUMNS
            )
            conn.execute(text(f"UPDATE hosts SET {copied}"))
            conn.execute(text("DROP TABLE host_state"))

    def _message(self, host: str, hour: int) -> pb.Snapshot | pb.Delta:
        moment = self.moment(hour)
        if hour == 0:
            return fleet.snapshot(1, moment, sockets_of(host, 0))
        before = {s.key.SerializeToString(): s for s in sockets_of(host, hour - 1)}
        after = {s.key.SerializeToString(): s for s in sockets_of(host, hour)}
        message = fleet.delta(
            hour + 1,
            moment,
            added=[s for k, s in after.items() if k not in before],
            removed=[s for k, s in before.items() if k not in after],
            changed=[s for k, s in after.items() if k in before and before[k] != s],
        )
        if host == "web-1":
            message.closed.CopyFrom(_closings(moment, hour))
        if host == "cache-1" and hour in (5, 6):  # scans dropped reported once, then a whole coverage again
            message.coverage.CopyFrom(_coverage(moment, dropped=hour == 5))
        return message


def questions(moments: list[datetime], since: datetime, until: datetime) -> list[tuple[str, ...]]:
    """Every question, at each moment and over the window [since, until]."""
    asked: list[tuple[str, ...]] = [("hosts",), ("sockets",), ("ports",), ("talks",)]
    for moment in moments:
        at = rfc3339(moment) or ""
        asked += [(question, "--at", at) for question in ("hosts", "sockets", "ports", "talks", "audit")]
    window = (rfc3339(since) or "", rfc3339(until) or "")
    asked += [
        ("talks", "--since", window[0], "--until", window[1]),
        ("diff", "--from", window[0], "--to", window[1]),
        ("diff", "--from", window[0], "--to", window[1], "--short-lived"),
        ("history", "--host", "web-1", "--since", window[0]),
        ("history", "--host", "cache-1", "--port", "11211", "--since", window[0]),
    ]
    return asked


Answers = dict[tuple[str, ...], tuple[int, object, str]]


def answers(db_url: str, asked: list[tuple[str, ...]], env: dict[str, str] = ENV, cwd: Path = ROOT) -> Answers:
    """Each question's exit status, JSON answer and standard error, asked of the ``sockfleet`` command (``env``,
    ``cwd``: of another release of it)."""

    def one(question: tuple[str, ...]) -> tuple[int, object, str]:
        command = sockfleet(*question, "--format", "json", "--db", db_url)
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)
        return result.returncode, json.loads(result.stdout) if result.stdout else None, result.stderr

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(asked, pool.map(one, asked), strict=True))


def substantial(found: Answers) -> None:
    """The answers hold what the fleet did: hosts with their dropped scans, edges with bytes, history."""
    for question, (code, rows, _) in found.items():
        assert code in (0, 3), (question, code)  # audit: 3 when a host is not observed
        if question[0] in ("hosts", "sockets", "ports", "talks", "history"):
            assert rows, question
    hosts = next(rows for q, (_, rows, _) in found.items() if q[0] == "hosts" and len(q) == 1)
    assert isinstance(hosts, list)
    assert {(h["host"], h["gaps"], h["events_lost"]) for h in hosts} == {
        ("cache-1", 1, 0),
        ("db-1", 0, 0),
        ("web-1", 0, 1),
    }
    window = next(rows for q, (_, rows, _) in found.items() if q[0] == "talks" and "--since" in q)
    assert isinstance(window, list) and any(edge["short_lived"] and edge["client_bytes"] for edge in window)
