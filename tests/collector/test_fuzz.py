"""Random and malformed messages against a real collector: refused with a clear status, nothing stored,
and a well-behaved agent keeps streaming meanwhile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.harness import Agent, Collector

# FAILED_PRECONDITION: a message of an epoch older than the one the host holds (start a newer epoch).
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}
ADDRESSES = st.sampled_from(
    [
        "",
        "10.0.0.1",
        "::1",
        "::ffff:10.0.0.1",
        "fe80::1",
        "999.1.1.1",
        "not an address",
        "1" * 100,
        "10.0.0.1\x00",
        "::g",
    ]
)


KINDS = st.sampled_from([(1, 1, 1), (1, 2, 1), (2, 1, 2), (3, 3, 1), (3, 3, 3)])  # valid proto, family, type
NUMBERS = st.integers(0, 2**64 - 1) | st.integers(0, 10_000)


@st.composite
def sockets(draw: st.DrawFn) -> pb.Socket:
    proto, family, kind = draw(KINDS | st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
    key = pb.SocketKey(
        netns=draw(NUMBERS),
        proto=proto,  # type: ignore[arg-type]
        family=family,  # type: ignore[arg-type]
        type=kind,  # type: ignore[arg-type]
        inode=draw(NUMBERS),
        local_address=draw(ADDRESSES),
        local_port=draw(st.integers(0, 2**32 - 1) | st.integers(0, 65535)),
        remote_address=draw(ADDRESSES),
        remote_port=draw(st.integers(0, 2**32 - 1) | st.integers(0, 65535)),
        path=draw(st.text(max_size=20) | st.just("x" * 5000)),
    )
    sock = pb.Socket(
        key=key,
        state=draw(st.integers(0, 15)),  # type: ignore[arg-type]
        peer_inode=draw(NUMBERS),
        process=draw(st.text(max_size=10) | st.just("p" * 300) | st.just("nul\x00")),
        cmdline=draw(st.just("") | st.text(max_size=10) | st.just("c" * 5000)),
        owners=draw(st.integers(0, 9) | st.just(2**32 - 1)),
    )
    if draw(st.booleans()):
        sock.pid = draw(st.integers(0, 2**32 - 1))
    return sock


TIMES = st.integers(-(2**63), 2**63 - 1) | st.just(int(datetime.now(UTC).timestamp() * 1e6))


@st.composite
def bodies(draw: st.DrawFn) -> pb.AgentMessage:
    epoch, seq = draw(st.integers(0, 3) | st.just(2**64 - 1)), draw(st.integers(0, 3))
    if draw(st.booleans()):
        return pb.AgentMessage(
            snapshot=pb.Snapshot(
                epoch=epoch, seq=seq, taken_at_us=draw(TIMES), sockets=draw(st.lists(sockets(), max_size=4))
            )
        )
    return pb.AgentMessage(
        delta=pb.Delta(
            epoch=epoch,
            seq=seq,
            base_seq=draw(st.integers(0, 3)),
            taken_at_us=draw(TIMES),
            added=draw(st.lists(sockets(), max_size=3)),
            removed=[s.key for s in draw(st.lists(sockets(), max_size=2))],
        )
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """A real collector on each database: the same message gets the same answer on both."""
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    else:
        db_url = request.getfixturevalue("pg_cluster").database()
    collector = Collector(db_url, 0, "--max-message-mb", "1", "--rate-limit", "0")
    yield collector.port, db_url
    collector.stop()
    assert "Traceback" not in collector.said()  # every refusal is one line


def counts(db_url: str, host: str) -> tuple[int, int]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM sockets s JOIN hosts h ON h.id = s.host_ref WHERE h.host_id = :h), "
                "(SELECT count(*) FROM observations o JOIN hosts h ON h.id = o.host_ref WHERE h.host_id = :h)"
            ),
            {"h": host},
        ).one()
    engine.dispose()
    return int(rows[0]), int(rows[1])


def stream(port: int, messages: list[pb.AgentMessage]) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/sockfleet.v1.Collector/Stream",
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        try:
            for _ in call(iter(messages), timeout=20):
                pass
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies())
def test_random_messages_are_refused_cleanly(server: tuple[int, str], body: pb.AgentMessage) -> None:
    port, db_url = server
    host = "fuzzed"
    stream(port, [pb.AgentMessage(hello=fleet.hello(host))])  # the host exists from here on
    before = counts(db_url, f"id-{host}")
    code = stream(port, [pb.AgentMessage(hello=fleet.hello(host)), body])
    if code != grpc.StatusCode.OK:
        assert code in REFUSED, code
        assert counts(db_url, f"id-{host}") == before  # nothing of a refused message is stored


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=200))
def test_undecodable_bytes_are_refused(server: tuple[int, str], garbage: bytes) -> None:
    port, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/sockfleet.v1.Collector/Stream",
            request_serializer=lambda b: b,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        code, replies = grpc.StatusCode.OK, []
        try:
            replies = list(call(iter([garbage]), timeout=20))
        except grpc.RpcError as exc:
            code = exc.code()
        # Undecodable bytes end the call with an error; bytes that decode to a message without a hello too.
        assert code != grpc.StatusCode.OK or replies == []


def test_oversized_message_is_refused(server: tuple[int, str]) -> None:
    port, db_url = server
    now = datetime.now(UTC).replace(tzinfo=None)
    big = fleet.snapshot(1, now, [fleet.tcp_listener(p, process="x" * 200, inode=p + 1) for p in range(6000)])
    assert big.ByteSize() > 1024 * 1024
    code = stream(port, [pb.AgentMessage(hello=fleet.hello("big")), pb.AgentMessage(snapshot=big)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert counts(db_url, "id-big") == (0, 0)


def test_well_behaved_agent_keeps_streaming(server: tuple[int, str]) -> None:
    port, db_url = server
    agent = Agent(port, "steady")
    try:
        deadline = time.monotonic() + 30
        while counts(db_url, "steady")[1] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = counts(db_url, "steady")[1]
        for seq in range(5):  # garbage from another client in the middle of the agent's stream
            assert (
                stream(
                    port,
                    [
                        pb.AgentMessage(hello=fleet.hello("noise")),
                        pb.AgentMessage(snapshot=pb.Snapshot(epoch=1, seq=seq + 1, taken_at_us=1)),
                    ],
                )
                == grpc.StatusCode.INVALID_ARGUMENT
            )
        while counts(db_url, "steady")[1] < first + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counts(db_url, "steady")[1] >= first + 3
    finally:
        agent.stop()


def test_rate_limit(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'rate.db'}"
    collector = Collector(db_url, 0, "--rate-limit", "2")
    try:
        now = datetime.now(UTC).replace(tzinfo=None)
        flood = [pb.AgentMessage(hello=fleet.hello("flood"))] + [
            pb.AgentMessage(snapshot=fleet.snapshot(seq, now, [])) for seq in range(1, 20)
        ]
        assert stream(collector.port, flood) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert counts(db_url, "id-flood")[1] <= 5  # the burst was applied, the rest refused
    finally:
        collector.stop()
