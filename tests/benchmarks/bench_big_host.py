"""Benchmark: a very large host resyncs while a small one keeps streaming.

    python -m tests.benchmarks.bench_big_host --sockets 1000000

A real ``sockfleet collector serve`` on SQLite (the single writer, where one large transaction would
hold every other agent).  One client plays the large host: a hello, then one full snapshot of
``--sockets`` established connections, in parts of ``PART_SOCKETS`` as a real agent sends it.  Another
plays a small host that sends a heartbeat every 50 ms and times each from send to Ack.

It prints how long the large snapshot took from its first part to its Ack, the collector's CPU time,
the small host's acknowledgement times meanwhile (p50, p95, max), and, as the peer in the same run,
the same snapshot applied in one transaction by the store itself (what the collector did before
large snapshots went in steps): the ratio of the two times, and how long that one transaction would
have held every other agent.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc

from sockfleet.collector import convert, db
from sockfleet.collector.store import Store
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1.limits import PART_SOCKETS
from tests.benchmarks.bench_collector import cpu_seconds
from tests.collector import fleet
from tests.collector.harness import Collector

STREAM = "/sockfleet.v1.Collector/Stream"


def connections(start: int, count: int) -> list[pb.Socket]:
    """Established calls from one client process to port 443 on many addresses (one flow per address)."""
    return [
        pb.Socket(
            key=pb.SocketKey(
                netns=1,
                proto=pb.PROTO_TCP,
                family=pb.FAMILY_INET,
                type=pb.SOCK_TYPE_STREAM,
                inode=i + 1,
                local_address="10.0.0.1",
                local_port=32768 + i % 25000,
                remote_address=f"10.1.{i // 25000 % 250}.{i // 25000 // 250 + 1}",
                remote_port=443,
            ),
            state=pb.STATE_ESTABLISHED,
            uid=0,
            user="root",
            pid=100,
            process="client",
            owners=1,
        )
        for i in range(start, start + count)
    ]


def _channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 << 20)])


class SmallHost(threading.Thread):
    """A host with one listener that sends a heartbeat every 50 ms and times each Ack."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acks: list[tuple[float, float]] = []  # (sent at, seconds to the Ack)
        self.ready = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        outgoing: queue.Queue[pb.AgentMessage | None] = queue.Queue()

        def messages() -> Iterator[pb.AgentMessage]:
            while (message := outgoing.get()) is not None:
                yield message

        with _channel(self.port) as channel:
            call = channel.stream_stream(
                STREAM,
                request_serializer=pb.AgentMessage.SerializeToString,
                response_deserializer=pb.CollectorMessage.FromString,
            )
            replies: Iterator[pb.CollectorMessage] = iter(call(messages()))
            now = datetime.now(UTC).replace(tzinfo=None)
            outgoing.put(pb.AgentMessage(hello=fleet.hello("small")))
            outgoing.put(pb.AgentMessage(snapshot=fleet.snapshot(1, now, [fleet.tcp_listener(80)])))
            next(replies)
            self.ready.set()
            seq = 1
            while not self.halt.is_set():
                seq += 1
                sent = time.perf_counter()
                outgoing.put(pb.AgentMessage(delta=fleet.delta(seq, datetime.now(UTC).replace(tzinfo=None))))
                next(replies)
                self.acks.append((sent, time.perf_counter() - sent))
                time.sleep(0.05)
            outgoing.put(None)


def big_snapshot(port: int, sockets: int) -> tuple[float, str]:
    """Send one full snapshot of ``sockets`` connections in parts: seconds from first part to the reply."""
    now = datetime.now(UTC).replace(tzinfo=None)
    parts = [
        pb.AgentMessage(
            snapshot=pb.Snapshot(
                epoch=1,
                seq=1,
                taken_at_us=fleet.us(now),
                sockets=connections(start, min(PART_SOCKETS, sockets - start)),
                more=start + PART_SOCKETS < sockets,
            )
        )
        for start in range(0, sockets, PART_SOCKETS)
    ]
    with _channel(port) as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        started = time.perf_counter()
        replies = list(call(iter([pb.AgentMessage(hello=fleet.hello("big")), *parts]), timeout=3600))
    return time.perf_counter() - started, ",".join(str(r.WhichOneof("body")) for r in replies)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def measure(sockets: int, folder: Path) -> dict[str, float]:
    """The large snapshot through a real collector, the small host's acks meanwhile."""
    collector = Collector(f"sqlite:///{folder / 'big.db'}")
    small = SmallHost(collector.port)
    try:
        small.start()
        small.ready.wait(60)
        cpu_before = cpu_seconds(collector.proc.pid)
        began = time.perf_counter()
        seconds, replies = big_snapshot(collector.port, sockets)
        during = [took for sent, took in small.acks if began <= sent <= began + seconds]
        cpu = cpu_seconds(collector.proc.pid) - cpu_before
    finally:
        small.halt.set()
        small.join(30)
        collector.stop()
    if replies != "ack":
        raise SystemExit(f"the large snapshot was answered {replies!r}")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "acks": len(during),
        "p50": percentile(during, 0.5),
        "p95": percentile(during, 0.95),
        "max": max(during),
    }


def one_transaction(sockets: int, folder: Path) -> float:
    """The peer: the same snapshot applied by the store in one transaction."""
    engine = db.engine(f"sqlite:///{folder / 'peer.db'}")
    db.migrate(engine)
    store = Store(engine)
    ref = store.hello(convert.greeting(fleet.hello("big")))
    snapshot = pb.Snapshot(
        epoch=1, seq=1, taken_at_us=fleet.us(datetime.now(UTC).replace(tzinfo=None)), sockets=connections(0, sockets)
    )
    started = time.perf_counter()
    store.apply(ref, convert.scan(snapshot))
    took = time.perf_counter() - started
    engine.dispose()
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1_000_000, help="sockets of the large host")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = measure(args.sockets, folder)
        peer = one_transaction(args.sockets, folder)
    ms = {key: run[key] * 1000 for key in ("p50", "p95", "max")}
    print(
        f"large host, {args.sockets:,} sockets in parts of {PART_SOCKETS:,}: acknowledged after "
        f"{run['seconds']:.1f} s, collector CPU {run['cpu']:.1f} s"
    )
    print(
        f"small host meanwhile: {int(run['acks'])} heartbeats, send to ack p50 {ms['p50']:.1f} ms, "
        f"p95 {ms['p95']:.1f} ms, max {ms['max']:.1f} ms"
    )
    print(
        f"peer, one transaction in the store: {peer:.1f} s, holding every other agent that long; "
        f"in steps / at once: {run['seconds'] / peer:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
