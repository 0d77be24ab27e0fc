"""Benchmark: a fleet of simulated agents against a real collector, on SQLite and PostgreSQL.

    python -m tests.benchmarks.bench_collector --agents 200 --rounds 20

One process plays many agents over grpc.aio, each with its own stream.  The
collector is a real ``sockfleet collector serve`` process.  Phases:

1. every agent sends a hello and a full snapshot of ``--snapshot-sockets`` sockets
   (full snapshots per second);
   then the same snapshot again, as after a reconnection (nothing to write);
2. ``--rounds`` deltas per agent, each with 1% churn of ``--sockets`` sockets
   (deltas per second);
3. ``--rounds`` heartbeats per agent on an unchanged host (socket rows written
   per unchanged host: the target is zero).

It prints throughput, the collector's CPU time per message (from
/proc/PID/stat), and the p95 time from sending a message to receiving its Ack,
measured at the client, so it includes queueing behind other agents.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
from sqlalchemy import create_engine, func, select

from sockfleet.collector.schema import sockets
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from tests import postgres

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # for the tests' own helper processes (python -m tests....)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def make_socket(host: int, n: int) -> pb.Socket:
    """A plausible socket: a few listeners, the rest established connections to other hosts."""
    if n < 10:
        return pb.Socket(
            key=pb.SocketKey(
                netns=1,
                proto=pb.PROTO_TCP,
                family=pb.FAMILY_INET,
                type=pb.SOCK_TYPE_STREAM,
                inode=n + 1,
                local_address="0.0.0.0",
                local_port=8000 + n,
            ),
            state=pb.STATE_LISTEN,
            uid=0,
            user="root",
            pid=100 + n,
            process=f"svc{n}",
            cmdline=f"/usr/bin/svc{n}",
            owners=1,
        )
    peer = f"10.{(host >> 8) & 255}.{host & 255}.{n % 250 + 1}"
    return pb.Socket(
        key=pb.SocketKey(
            netns=1,
            proto=pb.PROTO_TCP,
            family=pb.FAMILY_INET,
            type=pb.SOCK_TYPE_STREAM,
            inode=n + 1,
            local_address="10.0.0.1",
            local_port=20000 + n,
            remote_address=peer,
            remote_port=5432,
        ),
        state=pb.STATE_ESTABLISHED,
        uid=1000,
        user="app",
        pid=500,
        process="app",
        cmdline="/usr/bin/app --serve",
        owners=1,
    )


class SimulatedAgent:
    def __init__(self, index: int, channel: grpc.aio.Channel) -> None:
        self.index = index
        self.channel = channel
        self.epoch = time.time_ns() // 1000 + index
        self.seq = 0
        self.next_inode = 0
        self.live: list[pb.Socket] = []
        self.latencies: list[float] = []

    async def open(self) -> None:
        self.call = pb_grpc.CollectorStub(self.channel).Stream()  # type: ignore[no-untyped-call]
        hello = pb.Hello(
            host_id=f"bench-{self.index}", host_name=f"bench-{self.index}", agent_version="bench", interval_seconds=30
        )
        await self.call.write(pb.AgentMessage(hello=hello))

    async def send(self, message: pb.AgentMessage) -> None:
        started = time.perf_counter()
        await self.call.write(message)
        reply = await self.call.read()
        self.latencies.append(time.perf_counter() - started)
        if not reply.HasField("ack"):
            raise RuntimeError(f"agent {self.index}: {reply}")

    def now_us(self) -> int:
        return int(datetime.now(UTC).timestamp() * 1e6)

    async def snapshot(self, count: int) -> None:
        self.live = [make_socket(self.index, n) for n in range(count)]
        self.next_inode = count
        self.seq += 1
        await self.send(
            pb.AgentMessage(
                snapshot=pb.Snapshot(epoch=self.epoch, seq=self.seq, taken_at_us=self.now_us(), sockets=self.live)
            )
        )

    async def delta(self, churn: int) -> None:
        removed, self.live = self.live[10 : 10 + churn], self.live[:10] + self.live[10 + churn :]
        added = [make_socket(self.index, self.next_inode + n) for n in range(churn)]
        self.next_inode += churn
        self.live.extend(added)
        self.seq += 1
        await self.send(
            pb.AgentMessage(
                delta=pb.Delta(
                    epoch=self.epoch,
                    seq=self.seq,
                    base_seq=self.seq - 1,
                    taken_at_us=self.now_us(),
                    added=added,
                    removed=[s.key for s in removed],
                )
            )
        )

    async def close(self) -> None:
        await self.call.done_writing()


@contextmanager
def collector(db_url: str, summary: list[str]) -> Iterator[tuple[int, int]]:
    """A ``sockfleet collector serve`` process: yields (pid, port); its closing summary goes to ``summary``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockfleet",
            "collector",
            "serve",
            "--insecure",
            "--allow-anonymous",
            "--rate-limit",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db_url,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not match:
        raise RuntimeError(f"the collector did not start: {line}{proc.stderr.read()}")
    try:
        yield proc.pid, int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        summary.extend(line.strip() for line in proc.stderr if "applied" in line)
        proc.stderr.close()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


async def phase(agents: list[SimulatedAgent], step: str, rounds: int, argument: int) -> tuple[float, list[float]]:
    for agent in agents:
        agent.latencies = []
    started = time.perf_counter()

    async def one(agent: SimulatedAgent) -> None:
        for _ in range(rounds):
            await getattr(agent, step)(argument)

    await asyncio.gather(*(one(agent) for agent in agents))
    return time.perf_counter() - started, [lat for agent in agents for lat in agent.latencies]


async def run_fleet(port: int, pid: int, args: argparse.Namespace, db_url: str) -> list[str]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, args.agents // 50))]
    agents = [SimulatedAgent(i, channels[i % len(channels)]) for i in range(args.agents)]
    await asyncio.gather(*(agent.open() for agent in agents))
    lines = []
    churn = max(1, args.sockets // 100)

    cpu = cpu_seconds(pid)
    wall, lat = await phase(agents, "snapshot", 1, args.snapshot_sockets)
    used = cpu_seconds(pid) - cpu
    lines.append(
        f"  full snapshots ({args.snapshot_sockets} sockets), new hosts: {len(agents) / wall:8.1f}/s   "
        f"collector CPU {used / len(agents) * 1000:6.2f} ms/msg   p95 send->ack {p95(lat) * 1000:7.1f} ms"
    )
    cpu = cpu_seconds(pid)
    wall, lat = await phase(agents, "snapshot", 1, args.snapshot_sockets)  # as after a reconnection: unchanged
    used = cpu_seconds(pid) - cpu
    lines.append(
        f"  full snapshots ({args.snapshot_sockets} sockets), known hosts: {len(agents) / wall:6.1f}/s   "
        f"collector CPU {used / len(agents) * 1000:6.2f} ms/msg   p95 send->ack {p95(lat) * 1000:7.1f} ms"
    )
    await phase(agents, "snapshot", 1, args.sockets)  # back to the delta-phase size
    cpu = cpu_seconds(pid)
    wall, lat = await phase(agents, "delta", args.rounds, churn)
    used = cpu_seconds(pid) - cpu
    count = len(agents) * args.rounds
    lines.append(
        f"  deltas ({churn} added, {churn} removed):     {count / wall:8.1f}/s   "
        f"collector CPU {used / count * 1000:6.2f} ms/msg   p95 send->ack {p95(lat) * 1000:7.1f} ms"
    )
    engine = create_engine(db_url)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(sockets)).scalar_one()
    cpu = cpu_seconds(pid)
    wall, lat = await phase(agents, "delta", args.rounds, 0)
    used = cpu_seconds(pid) - cpu
    with engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(sockets)).scalar_one()
    engine.dispose()
    lines.append(
        f"  heartbeats (unchanged hosts):      {count / wall:8.1f}/s   "
        f"collector CPU {used / count * 1000:6.2f} ms/msg   p95 send->ack {p95(lat) * 1000:7.1f} ms"
    )
    lines.append(f"  socket rows written per unchanged host: {(after - before) / len(agents):g}")
    # Latency below saturation: every agent sends a delta at a fixed pace, --paced messages/s in all.
    pause = len(agents) / args.paced
    cpu = cpu_seconds(pid)

    async def paced(agent: SimulatedAgent) -> None:
        await asyncio.sleep(pause * agent.index / len(agents))
        for _ in range(args.rounds):
            started = time.perf_counter()
            await agent.delta(churn)
            await asyncio.sleep(max(0.0, pause - (time.perf_counter() - started)))

    for agent in agents:
        agent.latencies = []
    await asyncio.gather(*(paced(agent) for agent in agents))
    lat = [x for agent in agents for x in agent.latencies]
    lines.append(
        f"  paced deltas at {args.paced}/s:           p50 send->ack {statistics.median(lat) * 1000:6.1f} ms   "
        f"p95 {p95(lat) * 1000:6.1f} ms   collector CPU {(cpu_seconds(pid) - cpu) / len(lat) * 1000:.2f} ms/msg"
    )
    for agent in agents:
        await agent.close()
    for channel in channels:
        await channel.close(None)
    return lines


def bench(backend: str, db_url: str, args: argparse.Namespace) -> None:
    summary: list[str] = []
    with collector(db_url, summary) as (pid, port):
        lines = asyncio.run(run_fleet(port, pid, args, db_url))
    print(f"{backend}: {args.agents} agents", flush=True)
    print("\n".join(lines), flush=True)
    for line in summary:  # over every phase, saturated ones included
        print("  collector log: " + line.split("stopped; ", 1)[-1], flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--sockets", type=int, default=500, help="sockets per host in the delta phases")
    parser.add_argument("--snapshot-sockets", type=int, default=1000, help="sockets per full snapshot")
    parser.add_argument("--rounds", type=int, default=20, help="deltas and heartbeats per agent")
    parser.add_argument("--paced", type=int, default=300, help="offered deltas per second in the latency phase")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    for backend in args.backends.split(","):
        with postgres.database(backend) as url:
            bench(backend, url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
