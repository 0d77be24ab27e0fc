"""A credential names one host: its id and its name.  Forged names are refused, renaming is an admin's
command, re-enrolling needs --rotate, and a revoked token ends its open stream at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from sockfleet.collector import db
from sockfleet.collector.server import start, stop
from sockfleet.collector.store import Store
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.collector import fleet
from tests.collector.harness import ENV, Collector, ask, ports, sockfleet, wait_for
from tests.conftest import ROOT


@pytest.fixture
def secured(db_url: str) -> Iterator[int]:
    """A collector that lets in enrolled agents only; its port."""
    collector = Collector(db_url, 0, "--insecure", secured=True)
    yield collector.port
    collector.stop()


def hello(host_id: str, name: str) -> pb.AgentMessage:
    message = fleet.hello(name)
    message.host_id = host_id
    return pb.AgentMessage(hello=message)


def send(port: int, token: str, host_id: str, name: str, listener: int) -> list[pb.CollectorMessage]:
    now = datetime.now(UTC).replace(tzinfo=None)
    messages = [hello(host_id, name), pb.AgentMessage(snapshot=fleet.snapshot(1, now, [fleet.tcp_listener(listener)]))]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
        return list(stub.Stream(iter(messages), metadata=(("authorization", f"Bearer {token}"),), timeout=20))


def refusal(port: int, token: str, host_id: str, name: str, listener: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        send(port, token, host_id, name, listener)
    return caught.value


def enroll(db_url: str, *args: str) -> str:
    return ask(db_url, "collector", "enroll", *args).stdout.strip()


def test_a_token_cannot_report_under_another_hosts_name(secured: int, db_url: str) -> None:
    web, dbt = enroll(db_url, "--host", "id-web-1"), enroll(db_url, "--host", "id-db-1")
    assert send(secured, dbt, "id-db-1", "db-1", 5432)[0].HasField("ack")
    assert send(secured, web, "id-web-1", "web-1", 80)[0].HasField("ack")
    forged = refusal(secured, web, "id-web-1", "db-1", 6666)  # web-1's token, db-1's name
    assert forged.code() == grpc.StatusCode.PERMISSION_DENIED
    assert str(forged.details()).startswith("hello.host_name: 'db-1' is the name of another host")
    assert [(r["host"], r["local_port"]) for r in ports(db_url, "--host", "db-1")] == [("db-1", 5432)]
    assert not ports(db_url, "--port", "6666")


def test_renaming_is_an_admins_command(secured: int, db_url: str) -> None:
    token = enroll(db_url, "--host", "id-web-1")
    assert send(secured, token, "id-web-1", "web-1", 80)[0].HasField("ack")
    moved = refusal(secured, token, "id-web-1", "www-1", 80)
    assert moved.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "renaming it takes `sockfleet collector rename --host id-web-1 --name www-1`" in str(moved.details())
    ask(db_url, "collector", "rename", "--host", "web-1", "--name", "www-1")
    assert send(secured, token, "id-web-1", "www-1", 80)[0].HasField("ack")
    assert [h["host"] for h in json.loads(ask(db_url, "hosts", "--format", "json").stdout)] == ["www-1"]
    assert ports(db_url, "--host", "id-web-1")  # a host is named by its id too


def test_an_enrolled_name_is_the_hosts_name(secured: int, db_url: str) -> None:
    token = enroll(db_url, "--host", "4f6c0a1e", "--name", "web-7")
    assert send(secured, token, "4f6c0a1e", "localhost", 80)[0].HasField("ack")  # the agent's own hostname
    assert [h["host"] for h in json.loads(ask(db_url, "hosts", "--format", "json").stdout)] == ["web-7"]


def test_reenrolling_needs_rotate_and_the_old_token_stops_working(secured: int, db_url: str) -> None:
    first = enroll(db_url, "--host", "id-web-1")
    again = ask(db_url, "collector", "enroll", "--host", "id-web-1", check=False)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "--rotate" in again.stderr
    rotated = ask(db_url, "collector", "enroll", "--host", "id-web-1", "--rotate")
    assert "its earlier token no longer works" in rotated.stderr
    assert refusal(secured, first, "id-web-1", "web-1", 80).code() == grpc.StatusCode.UNAUTHENTICATED
    assert send(secured, rotated.stdout.strip(), "id-web-1", "web-1", 80)[0].HasField("ack")
    listing = json.loads(ask(db_url, "collector", "tokens", "--format", "json").stdout)
    assert [(t["host_id"], t["status"]) for t in listing] == [("id-web-1", "revoked"), ("id-web-1", "active")]
    assert listing[1]["last_used_at"] is not None and listing[0]["enrolled_at"] is not None


def test_revoking_ends_the_open_stream(secured: int, db_url: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(enroll(db_url, "--host", "revoked-host"))
    token_file.chmod(0o600)
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen(
            sockfleet(
                "agent",
                "run",
                "--collector",
                f"127.0.0.1:{secured}",
                "--insecure",
                "--interval",
                "0.5s",
                "--namespaces",
                "current",
                "--host",
                "revoked-host",
                "--token-file",
                str(token_file),
            ),
            stderr=out,
            env=ENV,
            cwd=ROOT,
        )
        try:
            wait_for(lambda: "revoked-host" in ask(db_url, "hosts").stdout, "the enrolled agent")
            ask(db_url, "collector", "revoke", "--host", "revoked-host")
            revoked = time.monotonic()
            wait_for(lambda: "token was revoked" in log.read_text(), "the stream to end")
            assert time.monotonic() - revoked < 3  # within a second's look, and the agent's next write
            cut = datetime.now(UTC).replace(tzinfo=None)
            time.sleep(2)
            engine = create_engine(db_url)
            with engine.connect() as conn:
                later = conn.execute(
                    text("SELECT count(*) FROM observations WHERE received_at > :t"), {"t": cut}
                ).scalar_one()
            engine.dispose()
            assert later == 0  # nothing acknowledged after the revocation
            # And the reconnection is refused (an attempt that races the refusal may end with another status
            # first, and is retried).
            wait_for(lambda: "unknown or revoked agent token" in log.read_text(), "the refusal", timeout=30)
        finally:
            agent.terminate()
            agent.wait(timeout=20)


def test_the_collector_logs_who_came_who_left_and_who_was_refused(db_url: str) -> None:
    collector = Collector(db_url, 0, "--insecure", secured=True)
    try:
        token = enroll(db_url, "--host", "id-web-1")
        send(collector.port, token, "id-web-1", "web-1", 80)
        refusal(collector.port, "not-a-token", "id-web-1", "web-1", 80)
        wait_for(lambda: "disconnected" in collector.said(), "the log")
    finally:
        collector.stop()
    said = collector.said()
    assert "host web-1 (id-web-1) connected from ipv4:127.0.0.1:" in said
    assert "host web-1 (id-web-1) disconnected: the agent closed the stream" in said
    assert "refused a stream from ipv4:127.0.0.1:" in said and "unknown or revoked agent token" in said
    assert token not in said  # no token ever reaches a log


def test_sigterm_stops_a_busy_collector_at_once(db_url: str, tmp_path: Path) -> None:
    from tests.collector.harness import Agent

    collector = Collector(db_url)
    agent = Agent(collector.port, "busy", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: "busy" in ask(db_url, "hosts").stdout, "the agent")
        started = time.monotonic()
        collector.stop()
        assert time.monotonic() - started < 3  # the open stream ends after its message, not after the grace
    finally:
        agent.stop()
    said = collector.said()
    assert collector.proc.returncode == 0
    assert "Traceback" not in said and "CancelledError" not in said
    assert "host busy (busy) disconnected: the collector is stopping" in said
    if db_url.startswith("sqlite:///"):  # every connection closed: SQLite folded its write-ahead log back
        database = Path(db_url.removeprefix("sqlite:///"))
        assert not [path.name for path in database.parent.glob(database.name + "-*")]


def test_stopping_waits_for_each_stream_to_end(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A collector stopped while 50 hosts stream deltas every 0.2 s: once ``stop`` returns, no stream's task is
    still running (gRPC counts a stream ended when its status is sent; its task then logs and gives the host's
    lease back), so none is cancelled when the process leaves its event loop, which gRPC logs as a traceback."""
    from tests.benchmarks.fleet_load import Agent, Channels, Tally

    handlers = ("_handle_exceptions", "_schedule_rpc_coro", "_handle_rpc")  # gRPC's tasks of a served call

    async def storm() -> list[str]:
        engine = db.engine(db_url)
        db.migrate(engine)
        server, port, service = await start(Store(engine), "127.0.0.1:0", None, anonymous=True)
        tally, channels = Tally(), Channels(1)
        agents = [Agent(n, [f"127.0.0.1:{port}"], channels, 0.2, 50, 0.1) for n in range(50)]
        tasks = [asyncio.create_task(agent.run(tally, n / 100)) for n, agent in enumerate(agents)]
        try:
            deadline = time.monotonic() + 60
            while not all(agent.connected for agent in agents) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert all(agent.connected for agent in agents), "every host streaming"
            await asyncio.sleep(0.5)
            await stop(server, service)
            running = [task.get_coro() for task in asyncio.all_tasks() if not task.done()]
            return [name for name in (getattr(coro, "__qualname__", "") for coro in running) if name in handlers]
        finally:
            for agent in agents:
                agent.stop.set()
            await asyncio.gather(*tasks)
            await channels.close()
            engine.dispose()

    assert asyncio.run(storm()) == []
    assert not [record for record in caplog.records if record.name.startswith("grpc")]


def test_a_stream_turned_away_while_stopping_leaves_nothing_unread(tmp_path: Path) -> None:
    """A stream that comes while the collector stops is turned away (UNAVAILABLE) without a reader made for it:
    gRPC's reader, made and never read, was reported at exit as a coroutine never awaited."""
    import gc
    import warnings

    from tests.collector.raw import STREAM, hello

    async def turned_away() -> grpc.StatusCode:
        engine = db.engine(f"sqlite:///{tmp_path / 'stopping.db'}")
        db.migrate(engine)
        server, port, service = await start(Store(engine), "127.0.0.1:0", None, anonymous=True)
        try:
            service.close()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                method = channel.stream_stream(
                    STREAM, request_serializer=lambda b: b, response_deserializer=pb.CollectorMessage.FromString
                )
                call = method()  # type: ignore[call-arg]  # the stream is written to below
                await call.write(hello("late"))
                code: grpc.StatusCode = await call.code()
        finally:
            await stop(server, service)
            engine.dispose()
        return code

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = asyncio.run(turned_away())
        gc.collect()
    assert code == grpc.StatusCode.UNAVAILABLE
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_a_stream_still_silent_when_the_collector_stops_is_not_called_invalid(tmp_path: Path) -> None:
    """A stream that has not said hello when the collector stops is closed at once (not after the 5 s the
    collector gives streams to end), with a line at info, not refused as a stream whose first message is not
    a hello."""
    import threading

    from tests.collector.raw import STREAM

    collector = Collector(f"sqlite:///{tmp_path / 'silent.db'}", 0, "--insecure", "--allow-anonymous")
    release = threading.Event()

    def nothing() -> Iterator[bytes]:
        release.wait(60)
        yield from ()

    statuses: list[grpc.StatusCode] = []

    def silent() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{collector.port}") as channel:
            call = channel.stream_stream(STREAM, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            try:
                for _ in call(nothing(), timeout=60):
                    pass
            except grpc.RpcError as exc:
                statuses.append(exc.code())

    caller = threading.Thread(target=silent)
    caller.start()
    try:
        time.sleep(1)  # the stream is open and waits for its hello
        started = time.monotonic()
        collector.stop()
        stopping = time.monotonic() - started
    finally:
        release.set()
        caller.join(timeout=60)
    said = collector.said()
    assert "before its hello: the collector is stopping" in said
    assert "is not a hello" not in said and "Traceback" not in said
    assert statuses == [grpc.StatusCode.UNAVAILABLE]
    assert stopping < 4  # the grace is 5 s
