"""Several collectors on one PostgreSQL database: agents fail over between them, each host is applied by
one collector at a time (``collector.store.leases``), and a SQLite database takes one collector."""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from sockfleet.agent import targets
from sockfleet.agent.errors import UsageError
from sockfleet.collector import convert, db
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.store import STEP_SOCKETS, Store, leases
from sockfleet.collector.store.stepwise import apply_in_steps
from sockfleet.v1 import fleet_pb2 as pb
from tests import postgres
from tests.collector import fleet
from tests.collector.harness import ENV, Collector, ask, sockfleet, stamp, wait_for
from tests.collector.network import ADDRESSES, SWITCH, Network
from tests.collector.raw import STREAM
from tests.collector.test_tls import make_certificates
from tests.conftest import ROOT

needs_postgres = pytest.mark.skipif(postgres.binaries() is None, reason="PostgreSQL binaries are not installed")
SECOND = "10.77.0.253"  # the switch's second address: collector B listens there, A on SWITCH


def sql(db_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            return list(conn.execute(text(query), params))
    finally:
        engine.dispose()


def doubled_rows(db_url: str) -> list[Any]:
    """Sockets with more than one open row: there must be none."""
    return sql(
        db_url,
        "SELECT host_ref, key, count(*) FROM sockets WHERE valid_to IS NULL GROUP BY host_ref, key HAVING count(*) > 1",
    )


def longest_silence(db_url: str, host: str, since: datetime) -> float:
    """The longest time between two stored scans of ``host`` after ``since`` (seconds)."""
    rows = sql(
        db_url,
        "SELECT o.taken_at FROM observations o JOIN hosts h ON h.id = o.host_ref "
        "WHERE h.name = :host AND o.taken_at >= :since ORDER BY o.taken_at",
        host=host,
        since=since.replace(tzinfo=None),
    )
    times = [r.taken_at for r in rows]
    assert len(times) > 2, f"{host}: {len(times)} scans stored since {since}"
    return float(max((b - a).total_seconds() for a, b in itertools.pairwise(times)))


HOLDERS = "SELECT h.name, s.lease_holder FROM hosts h JOIN host_state s ON s.host_ref = h.id"


def holders(db_url: str) -> dict[str, str | None]:
    return {r.name: r.lease_holder for r in sql(db_url, HOLDERS)}


def talks(db_url: str, *args: str) -> set[tuple[Any, ...]]:
    rows = json.loads(ask(db_url, "talks", "--format", "json", *args).stdout)
    return {
        (r["client_host"], r["client_process"], r["server_host"], r["server_port"], r["connections"])
        for r in rows
        if r["server_port"] == 8080
    }


WEB_B = ("host-b", "webcli", "host-a", 8080, 2)
WEB_C = ("host-c", "webcli", "host-a", 8080, 1)


def serve(network: Network, db_url: str, address: str, tls: tuple[Path, Path, Path]) -> subprocess.Popen[str]:
    """A collector in the switch's namespace, with a certificate for the name ``collectors`` only."""
    _, cert, key = tls
    proc = network.run(
        network.switch,
        *sockfleet("collector", "serve", "--allow-anonymous", "--listen", f"{address}:7050", "--db", db_url),
        *("--tls-cert", str(cert), "--tls-key", str(key)),
        ready=False,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line + proc.stderr.read()
    return proc


@pytest.fixture
def named_collectors(network: Network) -> Iterator[Network]:
    """The name ``collectors`` resolves to both of the switch's addresses in every host's namespace
    (``ip netns exec`` reads /etc/netns/NAMESPACE/hosts as /etc/hosts)."""
    subprocess.run(["ip", "-n", network.switch, "addr", "add", f"{SECOND}/24", "dev", "br0"], check=True)
    folders = [Path("/etc/netns") / namespace for namespace in network.hosts.values()]
    try:
        for folder in folders:
            folder.mkdir(parents=True)
            (folder / "hosts").write_text(f"127.0.0.1 localhost\n{SWITCH} collectors\n{SECOND} collectors\n")
        yield network
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@needs_postgres
@pytest.mark.root
def test_agents_move_to_the_other_collector_and_lose_nothing(
    named_collectors: Network, pg_cluster: postgres.Cluster, tmp_path: Path
) -> None:
    network = named_collectors
    db_url = pg_cluster.database()
    ask(db_url, "collector", "migrate")
    # The name resolves to two addresses: the agents connect to each as an address, and still check the
    # certificate against the name.
    tls = make_certificates(tmp_path, "DNS:collectors")
    running = {SWITCH: serve(network, db_url, SWITCH, tls), SECOND: serve(network, db_url, SECOND, tls)}
    for host in ("host-a", "host-b", "host-c"):
        network.run(
            network.hosts[host],
            *sockfleet("agent", "run", "--collector", "collectors:7050", "--ca", str(tls[0]), "--interval", "0.5s"),
            *("--namespaces", "current", "--host", host),
            ready=False,
        )
    network.process("host-a", "websvc", "tcp-listen", "0.0.0.0", "8080")
    network.process("host-b", "webcli", "tcp-connect", ADDRESSES["host-a"], "8080", "2")
    web_c = network.process("host-c", "webcli", "tcp-connect", ADDRESSES["host-a"], "8080", "1")
    wait_for(lambda: {WEB_B, WEB_C} <= talks(db_url), "every edge", timeout=60)
    wait_for(lambda: len(set(holders(db_url).values()) - {None}) >= 1, "leases taken")
    started = datetime.now(UTC)

    # SIGKILL the collector that holds the most hosts: its hosts' claims lapse, and they move.
    held = holders(db_url)
    pids = {address: proc.pid for address, proc in running.items()}
    victim = max(pids, key=lambda a: sum(f"/{pids[a]}/" in (h or "") for h in held.values()))
    survivor = SECOND if victim == SWITCH else SWITCH
    moved = [host for host, holder in held.items() if f"/{pids[victim]}/" in (holder or "")]
    assert moved, held
    before = stamp()
    time.sleep(0.5)
    running[victim].kill()
    network.stop(web_c)  # a connection closes while the collector is away
    during = datetime.now(UTC)
    wait_for(
        lambda: all(f"/{pids[survivor]}/" in (h or "") for h in holders(db_url).values()),
        f"{moved} taken by the other collector",
        timeout=30,
    )
    wait_for(lambda: WEB_C not in talks(db_url), "the closed connection", timeout=30)
    time.sleep(1)
    after = stamp()

    assert doubled_rows(db_url) == []
    for host in ("host-a", "host-b", "host-c"):
        assert longest_silence(db_url, host, started) < 3.0, host  # scans every 0.5 s, kept in the spool
    assert talks(db_url, "--at", before) == {WEB_B, WEB_C}
    assert talks(db_url, "--at", after) == {WEB_B}
    ports = json.loads(ask(db_url, "ports", "--at", during.isoformat(), "--format", "json").stdout)
    assert {(p["host"], p["local_port"]) for p in ports if p["local_port"] == 8080} == {("host-a", 8080)}

    # A collector stopped gracefully gives its hosts back at once: they move to a new one at the first try.
    running[victim] = serve(network, db_url, victim, tls)
    pids[victim] = running[victim].pid
    stopping = time.monotonic()
    network.stop(running[survivor])
    wait_for(
        lambda: all(f"/{pids[victim]}/" in (h or "") for h in holders(db_url).values()),
        "every host on the new collector",
        timeout=30,
    )
    assert time.monotonic() - stopping < 20
    assert doubled_rows(db_url) == []
    for host in ("host-a", "host-b", "host-c"):
        assert longest_silence(db_url, host, started) < 3.0, host
    assert talks(db_url) == {WEB_B}


class Talk:
    """One stream to a collector, a message at a time: ``send`` returns the collector's answer."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        call = self.channel.stream_stream(
            STREAM, request_serializer=lambda b: b, response_deserializer=pb.CollectorMessage.FromString
        )
        self.replies: Iterator[pb.CollectorMessage] = iter(call(iter(self.outbox.get, None), timeout=60))

    def say(self, message: Any) -> None:
        self.outbox.put(pb.AgentMessage(**message).SerializeToString())

    def send(self, message: Any) -> pb.CollectorMessage:
        self.say(message)
        return next(self.replies)

    def refused(self, message: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.send(message)
        return caught.value

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()


@needs_postgres
def test_two_collectors_racing_for_one_host_never_interleave_it(pg_cluster: postgres.Cluster) -> None:
    db_url = pg_cluster.database()
    a, b = Collector(db_url), Collector(db_url)
    talks_open: list[Talk] = []

    def talk(collector: Collector) -> Talk:
        talks_open.append(Talk(collector.port))
        return talks_open[-1]

    hello = fleet.hello("racer", interval=60)  # claims lapse 3 minutes after the last message
    now = datetime.now(UTC).replace(tzinfo=None)
    listener, other = fleet.tcp_listener(80), fleet.tcp_listener(443)
    try:
        new = talk(b)
        new.say({"hello": hello})
        assert new.send({"snapshot": fleet.snapshot(1, now, [listener])}).HasField("ack")

        stale = talk(a)  # the same host, on the other collector, while its stream on B goes on
        stale.say({"hello": hello})
        refusal = stale.refused({"snapshot": fleet.snapshot(2, now, [listener])})
        assert refusal.code() == grpc.StatusCode.UNAVAILABLE
        assert "is applying this host's stream" in str(refusal.details())
        assert new.send({"delta": fleet.delta(3, now, added=[other], base=1)}).HasField("ack")
        status = json.loads(ask(db_url, "collector", "status", "--format", "json").stdout)
        assert [(f"/{b.proc.pid}/" in holder, count) for holder, count in status["collectors"].items()] == [(True, 1)]
        assert f"/{b.proc.pid}/" in ask(db_url, "collector", "status").stdout

        # B's stream goes quiet, and its claim lapses.
        sql(db_url, "UPDATE host_state SET lease_until = :past RETURNING host_ref", past=datetime(2001, 1, 1))
        taker = talk(a)
        taker.say({"hello": hello})
        resync = taker.send({"delta": fleet.delta(4, now, base=3)})
        assert "taken over from another collector" in resync.resync.reason  # a take-over starts with a snapshot
        assert taker.send({"snapshot": fleet.snapshot(5, now, [listener])}).HasField("ack")

        late = new.refused({"delta": fleet.delta(6, now, removed=[listener], base=3)})
        assert late.code() == grpc.StatusCode.ABORTED
        assert "another stream took this host" in str(late.details())
    finally:
        for open_talk in talks_open:
            open_talk.close()
        a.stop()
        b.stop()
    stored = [(r.epoch, r.seq) for r in sql(db_url, "SELECT epoch, seq FROM observations ORDER BY id")]
    assert stored == [(1, 1), (1, 3), (1, 5)]
    assert doubled_rows(db_url) == []
    open_ports = {r.local_port for r in sql(db_url, "SELECT local_port FROM sockets WHERE valid_to IS NULL")}
    assert open_ports == {80}  # the last snapshot, from the stream that took the host over


def test_a_second_collector_on_one_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'one.db'}"
    first = Collector(db_url)
    try:
        second = subprocess.run(
            sockfleet("collector", "serve", "--insecure", "--listen", "127.0.0.1:0", "--db", db_url),
            capture_output=True,
            text=True,
            env=ENV,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    finally:
        first.stop()
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"another collector (process {first.proc.pid}) serves this SQLite database" in second.stderr
    assert "PostgreSQL" in second.stderr
    again = Collector(db_url)  # the lock goes with the process
    again.stop()


def test_a_link_to_a_served_sqlite_file_is_the_same_database(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    real = tmp_path / "real.db"
    first = Collector(f"sqlite:///{real}")
    try:
        (tmp_path / "links" / "soft.db").symlink_to(real)
        os.link(real, tmp_path / "links" / "hard.db")
        for link in ("soft.db", "hard.db"):
            second = subprocess.run(
                sockfleet("collector", "serve", "--insecure", "--listen", "127.0.0.1:0"),
                capture_output=True,
                text=True,
                env={**ENV, "SOCKFLEET_DB": f"sqlite:///{tmp_path / 'links' / link}"},  # the file names it too
                cwd=ROOT,
                timeout=60,
                check=False,
            )
            assert second.returncode == 2, (link, second.stderr)
            assert "another collector" in second.stderr
    finally:
        first.stop()


def test_a_holder_that_ended_on_this_machine_is_known_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    name = leases.holder_name(child.pid)
    try:
        assert not leases.gone(name)
        child.kill()
        wait_for(lambda: leases.gone(name), "the killed process, not yet reaped, taken for gone")
    finally:
        child.wait()
    assert leases.gone(name)
    mine = leases.holder_name()
    assert not leases.gone(mine)
    machine, pid, _, space = mine.split("/")
    assert not leases.gone(f"elsewhere.example/{pid}/1/{space}")  # another machine: only its claim's lapse tells
    assert not leases.gone(f"{machine}/{pid}/1/00000000")  # another process namespace or boot: the same
    for odd in ("not a holder", f"{machine}/\u00b2/1/{space}", f"{machine}/{'9' * 40}/1/{space}", "////"):
        assert not leases.gone(odd)


def test_a_claim_lapses_and_holds_no_longer_than_ten_minutes() -> None:
    assert leases.hold_for(0.1) == timedelta(seconds=2)
    assert leases.hold_for(15) == timedelta(seconds=45)
    assert leases.hold_for(10**9) == timedelta(minutes=10)


def large_snapshot(seq: int, count: int, moment: datetime) -> convert.Scan:
    sockets_ = [fleet.connection(10000 + i, "10.1.0.1", 443, 5000 + i) for i in range(count)]
    return convert.snapshot([fleet.snapshot(seq, moment, sockets_)])


def test_a_large_snapshot_taken_over_between_its_steps_writes_no_more(engine: Engine) -> None:
    store = Store(engine)
    hello = fleet.hello("big")
    store.hello(convert.greeting(hello))
    first = leases.claim(engine, hello.host_id, "collector-a/1/1/x", timedelta(seconds=60))
    assert first is not None
    ref, lease_a = first
    now = datetime.now(UTC).replace(tzinfo=None)
    steps = apply_in_steps(store, ref, large_snapshot(1, 12 * STEP_SOCKETS, now - timedelta(seconds=2)), lease=lease_a)
    for _ in range(4):
        assert next(steps) is None
    # Collector B takes the host over (A's claim lapsed: A is stuck) and applies a newer snapshot.
    with engine.begin() as conn:
        conn.execute(text("UPDATE host_state SET lease_until = :past"), {"past": now - timedelta(hours=1)})
    taken = leases.claim(engine, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60))
    assert taken is not None and taken[1].taken_over
    newer = convert.snapshot([fleet.snapshot(2, now - timedelta(seconds=1), [fleet.tcp_listener(22)])])
    assert store.apply(ref, newer, lease=taken[1]).acked
    with pytest.raises(RejectedMessage, match="another stream took this host") as refused:
        for _ in steps:
            pass
    assert refused.value.code == "ABORTED"
    with engine.connect() as conn:
        backwards = conn.execute(text("SELECT count(*) FROM sockets WHERE valid_to < valid_from")).scalar_one()
        open_rows = conn.execute(text("SELECT local_port FROM sockets WHERE valid_to IS NULL")).scalars().all()
    assert backwards == 0
    assert open_rows == [22]  # B's snapshot, and nothing A wrote after it


@needs_postgres
def test_a_hello_waits_for_a_locked_host_no_more_than_two_seconds(pg_cluster: postgres.Cluster) -> None:
    engine = db.engine(pg_cluster.database())
    db.migrate(engine)
    hello = fleet.hello("locked")
    Store(engine).hello(convert.greeting(hello))
    try:
        with engine.connect() as stuck:  # a collector stopped inside a transaction that holds the host's row
            stuck.execute(text(f"{HOLDERS} WHERE h.host_id = :id FOR UPDATE OF s"), {"id": hello.host_id})
            with pytest.raises(RejectedMessage, match="another collector is writing this host") as refused:
                leases.claim(engine, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60))
            assert refused.value.code == "UNAVAILABLE"
            # The host's claim is lapsed (no stream holds it), but the session has waited less than FROZEN.
            assert stuck.execute(text("SELECT 1")).scalar_one() == 1
            stuck.rollback()
        assert leases.claim(engine, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60)) is not None
    finally:
        engine.dispose()


@needs_postgres
def test_a_hello_that_meets_a_table_lock_is_refused_after_its_lock_waits(pg_cluster: postgres.Cluster) -> None:
    """A migration (or VACUUM FULL) holding host_state: the hello waits 2 s for the row, then as long again to
    look for a frozen holder, and is refused; it never waits for the lock's holder."""
    engine = db.engine(pg_cluster.database())
    db.migrate(engine)
    untimed = create_engine(engine.url)
    hello = fleet.hello("table-locked")
    Store(engine).hello(convert.greeting(hello))
    answers: queue.Queue[object] = queue.Queue()

    def hello_now() -> None:
        try:
            answers.put(leases.claim(engine, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60)))
        except RejectedMessage as exc:
            answers.put(exc)

    try:
        with untimed.connect() as migrating:
            migrating.execute(text("LOCK TABLE host_state IN ACCESS EXCLUSIVE MODE"))
            asking = threading.Thread(target=hello_now)
            asking.start()
            asking.join(60)  # not a bound on its speed: a hello waiting for this lock would wait until it goes
            waited_for_the_lock = asking.is_alive()
            migrating.rollback()
        asking.join()
        assert not waited_for_the_lock
        refused = answers.get_nowait()
        assert isinstance(refused, RejectedMessage) and refused.code == "UNAVAILABLE", refused
    finally:
        untimed.dispose()
        engine.dispose()


def claimed(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return leases.holders(conn)


@needs_postgres
def test_a_session_frozen_holding_a_host_is_ended_once_its_claim_lapsed(
    pg_cluster: postgres.Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector stopped inside a transaction that PostgreSQL's idle timeout does not cover (a session that
    stopped after a pipeline's closing flush waits with no timer) would keep the host from every collector
    for as long as it stays stopped: a hello that finds the host's row locked by a session that has waited on
    its collector longer than ``FROZEN``, and the host's claim lapsed, ends that session and takes the host."""
    monkeypatch.setattr(leases, "FROZEN", timedelta(seconds=1))
    engine = db.engine(pg_cluster.database())
    db.migrate(engine)
    untimed = create_engine(engine.url)  # no idle timeout: the stopped collector's session
    hello = fleet.hello("frozen-holder")
    Store(engine).hello(convert.greeting(hello))
    try:
        first = leases.claim(engine, hello.host_id, "collector-a/1/1/x", timedelta(seconds=8))
        assert first is not None
        with untimed.connect() as stuck:  # collector A, stopped while its transaction holds the host's row
            stuck.execute(text(f"{HOLDERS} WHERE h.host_id = :id FOR UPDATE OF s"), {"id": hello.host_id})
            time.sleep(1.2)
            # A's claim has not lapsed: its session is left alone, however long it has waited.
            with pytest.raises(RejectedMessage, match="another collector is writing this host"):
                leases.claim(engine, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60))
            wait_for(lambda: not claimed(engine), "collector A's claim to lapse", 30)
            with caplog.at_level(logging.WARNING, "sockfleet.collector"):
                taken = leases.claim(engine, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60))
            assert taken is not None and taken[1].taken_over
            with pytest.raises(DBAPIError, match="terminating connection due to administrator command"):
                stuck.execute(text("SELECT 1"))
        with engine.connect() as conn:
            assert conn.execute(text(HOLDERS)).all() == [("frozen-holder", "collector-b/2/2/x")]
        assert "which held the host's row and had waited" in caplog.text
    finally:
        untimed.dispose()
        engine.dispose()


@needs_postgres
def test_a_frozen_session_this_role_may_not_end_leaves_the_host_refused(
    pg_cluster: postgres.Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Collector B's role may not end A's session (A connects as a superuser here): B refuses the host as
    before, saying why when its role may see A's session (pg_read_all_stats); A's own idle timeout is left to
    free it."""
    monkeypatch.setattr(leases, "FROZEN", timedelta(seconds=1))
    engine = db.engine(pg_cluster.database())
    db.migrate(engine)
    hello = fleet.hello("frozen-superuser")
    Store(engine).hello(convert.greeting(hello))
    with engine.begin() as conn:
        conn.execute(text("DROP ROLE IF EXISTS sockfleet_other"))
        conn.execute(text("CREATE ROLE sockfleet_other LOGIN"))
        conn.execute(text("GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public TO sockfleet_other"))
    other = create_engine(make_url(engine.url.render_as_string(hide_password=False)).set(username="sockfleet_other"))
    untimed = create_engine(engine.url)  # no idle timeout: the stopped collector's session
    try:
        with untimed.connect() as stuck:
            stuck.execute(text(f"{HOLDERS} WHERE h.host_id = :id FOR UPDATE OF s"), {"id": hello.host_id})
            time.sleep(1.5)
            with caplog.at_level(logging.WARNING, "sockfleet.collector"):
                with pytest.raises(RejectedMessage, match="another collector is writing this host"):
                    leases.claim(other, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60))
                assert caplog.text == ""  # other roles' sessions are hidden from it
                with engine.begin() as conn:
                    conn.execute(text("GRANT pg_read_all_stats TO sockfleet_other"))
                with pytest.raises(RejectedMessage, match="another collector is writing this host"):
                    leases.claim(other, hello.host_id, "collector-b/2/2/x", timedelta(seconds=60))
            assert "could not end the frozen database session holding its row: must be a superuser" in caplog.text
            assert stuck.execute(text("SELECT 1")).scalar_one() == 1
            stuck.rollback()
    finally:
        other.dispose()
        untimed.dispose()
        with engine.begin() as conn:
            conn.execute(text("DROP OWNED BY sockfleet_other"))
            conn.execute(text("DROP ROLE sockfleet_other"))
        engine.dispose()


def test_collector_lists_are_checked_and_names_resolve_to_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [t.name for t in targets.parse("a:1, [::1]:50051")] == ["a:1", "[::1]:50051"]
    for bad in (
        "a:1,,b:2",
        "a",
        "a:0",
        "a:1,a:1",
        "a:x",
        "::1:50051",
        "a b:1",
        "unix:/x:1",
        "[::1]:1,[::1]:1",
        "a:\u00b2",
    ):
        with pytest.raises(UsageError, match="--collector"):
            targets.parse(bad)

    # A resolver with several addresses for one name cannot be set up outside a namespace: this test
    # answers getaddrinfo itself (the namespace test above resolves a real /etc/hosts).
    def resolve(host: str, port: int, **_: Any) -> list[Any]:
        assert host == "collectors"
        return [(0, 0, 0, "", (a, port)) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "fd00::3")]

    monkeypatch.setattr("socket.getaddrinfo", resolve)
    found = targets.expand(targets.parse("collectors:50051,10.9.9.9:1"), shuffle=False)
    assert [(t.address, t.label) for t in found] == [
        ("10.0.0.1:50051", "collectors:50051 (10.0.0.1:50051)"),
        ("10.0.0.2:50051", "collectors:50051 (10.0.0.2:50051)"),
        ("[fd00::3]:50051", "collectors:50051 ([fd00::3]:50051)"),
        ("10.9.9.9:1", "10.9.9.9:1"),
    ]
    rotation = targets.Rotation(targets.parse("collectors:50051"))
    assert rotation.current.address == "collectors:50051"  # resolved only when about to connect, off the loop
    rotation.resolve()
    seen = {rotation.current.address}
    assert [rotation.failed() for _ in range(3)] == [False, False, True]  # every collector failed once
    seen |= {rotation.current.address}
    rotation.answered()
    assert not rotation.failed()
    assert seen <= {"10.0.0.1:50051", "10.0.0.2:50051", "[fd00::3]:50051"}


def test_a_new_round_never_starts_with_the_collector_that_just_failed() -> None:
    """After the last collector of a round fails, the names are read again and shuffled; the one that just failed
    goes last, or an agent would go straight back to a collector that froze (and wait out its pings again)."""
    rotation = targets.Rotation(targets.parse("127.0.0.1:50051,127.0.0.2:50051,127.0.0.3:50051"))
    rotation.resolve()
    for _ in range(200):
        failing = rotation.current
        rotation.failed()
        rotation.resolve()
        assert rotation.current != failing
    single = targets.Rotation(targets.parse("127.0.0.1:50051"))
    single.resolve()
    single.failed()
    single.resolve()
    assert single.current.address == "127.0.0.1:50051"  # the only one is tried again


def test_an_agent_moves_past_a_collector_that_is_down(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'failover.db'}"
    collector = Collector(db_url)
    down = Collector(f"sqlite:///{tmp_path / 'other.db'}")
    dead_port = down.port
    down.stop()
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen(
            sockfleet(
                "agent",
                "run",
                "--collector",
                f"127.0.0.1:{dead_port},127.0.0.1:{collector.port}",
                "--insecure",
                "--interval",
                "0.5s",
                "--namespaces",
                "current",
                "--host",
                "two-ways",
            ),
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=ENV,
            cwd=ROOT,
        )
        try:
            wait_for(lambda: "two-ways" in ask(db_url, "hosts").stdout, "the host on the live collector")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
            collector.stop()
    said = log.read_text()
    if f"127.0.0.1:{dead_port}: connection refused" in said:  # it tried the dead one first, then moved on
        assert f"next: the collector at 127.0.0.1:{collector.port}" in said


@needs_postgres
def test_a_writer_stopped_inside_a_transaction_loses_its_session_after_ten_seconds(
    pg_cluster: postgres.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collector frozen inside a transaction would hold its host's row for as long as it stays frozen; the
    database ends such a session after 10 s (idle in transaction; an agent waits as long for an Ack before it
    moves), so another collector can take the host.
    Questions' sessions (read only) keep the server's default."""
    url = pg_cluster.database()
    writer, reader = db.engine(url), None
    try:
        db.migrate(writer)
        reader = db.engine(url, write=False)
        with writer.connect() as conn:
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar_one() == "10s"
        seen = []  # a migration, which may work in Python between statements for longer, is exempt

        def upgrade(config: Any, revision: str) -> None:
            seen.append(config.attributes["connection"].exec_driver_sql("SHOW idle_in_transaction_session_timeout"))

        monkeypatch.setattr("alembic.command.upgrade", upgrade)
        db.migrate(writer)
        assert [shown.scalar_one() for shown in seen] == ["0"]
        with reader.connect() as conn:
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar_one() == "0"
    finally:
        writer.dispose()
        if reader is not None:
            reader.dispose()
