"""One status per cause, the same on SQLite and PostgreSQL, naming the field, with nothing stored and one
log line; streams that never say hello are closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.harness import Collector, wait_for
from tests.collector.raw import STREAM, hello, snapshot, stream


def stored(db_url: str, host: str) -> tuple[int, int]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM sockets s JOIN hosts h ON h.id = s.host_ref WHERE h.name = :h), "
                "(SELECT count(*) FROM observations o JOIN hosts h ON h.id = o.host_ref WHERE h.name = :h)"
            ),
            {"h": host},
        ).one()
    engine.dispose()
    return int(row[0]), int(row[1])


def _set(path: str, value: object) -> Callable[[pb.Snapshot], object]:
    def change(message: pb.Snapshot) -> None:
        target: object = message.sockets[0]
        *parts, last = path.split(".")
        for part in parts:
            target = getattr(target, part)
        setattr(target, last, value)

    return change


def _closed_flow(**change: object) -> dict[str, object]:
    """A flow of closed connections as an agent sends it (served on 8080, both TCP ends' bytes), changed."""
    flow: dict[str, object] = {
        "netns": 1, "proto": pb.PROTO_TCP, "role": "s", "process": "web", "local_address": "10.0.0.1",
        "local_port": 8080, "remote_address": "10.0.0.2", "remote_port": 0, "connections": 2, "short_lived": 2,
        "sent_bytes": 10, "received_bytes": 20, "first_us": 1_700_000_000_000_000, "last_us": 1_700_000_001_000_000,
    }  # fmt: skip
    return {**flow, **change}


CASES = [
    (
        "nul",
        [hello("nul"), snapshot(change=_set("process", "ng\x00inx"))],
        "snapshot.sockets[0].process: holds a NUL character",
    ),
    (
        "pid",
        [hello("pid"), snapshot(change=_set("pid", 2**32 - 1))],
        "snapshot.sockets[0].pid: 4294967295 is larger than 4194304",
    ),
    (
        "owners",
        [hello("owners"), snapshot(change=_set("owners", 2**32 - 1))],
        "snapshot.sockets[0].owners: 4294967295 is larger than 4194304",
    ),
    (
        "coverage-text",
        [
            hello("coverage-text"),
            snapshot(change=lambda m: m.coverage.sources[0].__setattr__("error", "e" * (8 << 20))),
        ],
        "snapshot.coverage.sources[0].error: 8388608 characters, more than 4096",
    ),
    (
        "coverage-pids",
        [
            hello("coverage-pids"),
            snapshot(change=lambda m: m.coverage.processes_unreadable.extend(range(1, 2_000_001))),
        ],
        "snapshot.coverage.processes_unreadable: 2,000,000 entries, more than 65,536",
    ),
    (
        "address",
        [hello("address", lambda h: h.addresses.add(netns=1, interface="eth1", address="")), snapshot()],
        "hello.addresses[1].address: empty",
    ),
    (
        "interface",
        [hello("interface", lambda h: h.addresses.add(netns=1, interface="i" * 200, address="10.9.9.9")), snapshot()],
        "hello.addresses[1].interface: 200 characters, more than 64",
    ),
    ("utf8", [hello("utf8").replace(b"utf8", b"\xff\xfe\xfd\xfc")], "not a valid sockfleet.v1.AgentMessage"),
    (
        "closed-role",
        [hello("closed-role"), snapshot(change=lambda m: m.closed.flows.add(**_closed_flow(role="x")))],
        "snapshot.closed.flows[0].role: 'x' is not one of s, c, n",
    ),
    (
        "closed-count",
        [hello("closed-count"), snapshot(change=lambda m: m.closed.flows.add(**_closed_flow(short_lived=9)))],
        "snapshot.closed.flows[0].short_lived: 9 is more than connections 2",
    ),
    (
        "closed-port",
        [hello("closed-port"), snapshot(change=lambda m: m.closed.flows.add(**_closed_flow(remote_port=443)))],
        "snapshot.closed.flows[0].remote_port: folded away by the flow's role, so 0",
    ),
]


@pytest.mark.parametrize(("host", "messages", "field"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_invalid_argument_naming_the_field(
    collector: Collector, host: str, messages: list[bytes], field: str
) -> None:
    code, details, _ = stream(collector.port, messages)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert field in details
    assert stored(collector.db_url, host) == (0, 0)
    assert "Traceback" not in collector.said()
    # One log line says why; the collector's standard error is read by a thread, so it may come a moment later.
    wait_for(lambda: any(field[:30] in line for line in collector.lines if "refused" in line), "the refusal's log line")


def test_an_older_epoch_is_told_to_start_a_newer_one(collector: Collector) -> None:
    assert stream(collector.port, [hello("epochs"), snapshot(epoch=9)])[0] == grpc.StatusCode.OK
    code, details, metadata = stream(collector.port, [hello("epochs"), snapshot(epoch=3)])
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "snapshot.epoch: 3 is older than the host's epoch 9" in details
    assert metadata["sockfleet-epoch"] == "9"
    assert stored(collector.db_url, "epochs") == (1, 1)


async def _idle(port: int, count: int) -> list[tuple[grpc.StatusCode, float]]:
    """``count`` streams that never say hello: how each ended, and after how long."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            STREAM, request_serializer=lambda b: b, response_deserializer=pb.CollectorMessage.FromString
        )

        async def one() -> tuple[grpc.StatusCode, float]:
            started = time.monotonic()
            call: Any = method()  # type: ignore[call-arg]
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                return exc.code(), time.monotonic() - started
            return grpc.StatusCode.OK, time.monotonic() - started

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_streams_that_never_say_hello_are_closed(tmp_path: pytest.TempPathFactory) -> None:
    collector = Collector(f"sqlite:///{tmp_path}/idle.db", 0, "--hello-timeout", "1s")
    try:
        ended = asyncio.run(_idle(collector.port, 300))
    finally:
        collector.stop()
    codes = [code for code, _ in ended]
    # At most 256 may wait to be let in; the others are turned away at once, the rest after the timeout.
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 300 - 256
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) + codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 300
    assert max(seconds for _, seconds in ended) < 10


SCAN = fleet.us(datetime.now(UTC).replace(tzinfo=None))  # one scan time for every part of a test


def part(seq: int, ports: range, more: bool, epoch: int = 1, coverage: bool = False) -> bytes:
    message = pb.Snapshot(
        epoch=epoch, seq=seq, taken_at_us=SCAN, sockets=[fleet.tcp_listener(p) for p in ports], more=more
    )
    if coverage:
        message.coverage.namespaces_scanned.append(fleet.NETNS)
    return pb.AgentMessage(snapshot=message).SerializeToString()


def test_parts_carry_sockets_only_and_nothing_comes_between_them(collector: Collector) -> None:
    code, details, _ = stream(collector.port, [hello("parts-a"), part(1, range(80, 82), True, coverage=True)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the last part of a snapshot carries its coverage" in details
    delta = pb.AgentMessage(delta=fleet.delta(2, datetime.now(UTC).replace(tzinfo=None))).SerializeToString()
    code, details, _ = stream(
        collector.port, [hello("parts-b"), part(1, range(80, 82), True), delta, part(1, range(82, 84), False)]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "delta: came before the last part of snapshot (1, 1)" in details
    assert stored(collector.db_url, "parts-a") == stored(collector.db_url, "parts-b") == (0, 0)
    whole = stream(collector.port, [hello("parts-c"), part(1, range(80, 82), True), part(1, range(82, 84), False)])
    assert whole[0] == grpc.StatusCode.OK
    assert stored(collector.db_url, "parts-c") == (4, 1)


async def _half_sent(port: int, count: int) -> list[grpc.StatusCode]:
    """``count`` streams that each send a first part and wait: how each ended."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            STREAM, request_serializer=lambda b: b, response_deserializer=pb.CollectorMessage.FromString
        )
        calls: list[Any] = []
        for index in range(count):
            call: Any = method()  # type: ignore[call-arg]
            await call.write(hello(f"half-{index}"))
            await call.write(part(1, range(80, 82), True))
            calls.append(call)
        await asyncio.sleep(1)
        ended = []
        for call in calls:
            ended.append(await call.code() if call.done() else grpc.StatusCode.OK)
            call.cancel()
        return ended


def test_the_collector_holds_few_snapshots_in_parts_at_once(collector: Collector) -> None:
    ended = asyncio.run(_half_sent(collector.port, 6))
    assert ended.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2  # four may wait for their last part


def test_an_interval_in_the_hello_does_not_lift_the_rate_limit(collector: Collector) -> None:
    tiny = fleet.hello("tiny-interval")
    tiny.interval_ms = 1
    start = datetime.now(UTC).replace(tzinfo=None)
    messages = [pb.AgentMessage(hello=tiny).SerializeToString(), snapshot()]
    for seq in range(2, 200):
        delta = fleet.delta(seq, start)
        delta.taken_at_us = fleet.us(start) + seq * 1000  # a millisecond apart
        messages.append(pb.AgentMessage(delta=delta).SerializeToString())
    code, _, _ = stream(collector.port, messages)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stored(collector.db_url, "tiny-interval")[1] < 100
