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

The same phases run first against the floor (``tests.benchmarks.floor_collector``: a bare grpc.aio
server that decodes each message, writes its socket rows with one executemany on SQLite or one COPY
on PostgreSQL, and acknowledges after the commit), on a database of its own on the same server, and
every collector figure is also printed as a ratio to the floor's from the same run: the collector's
time per message (the inverse of its rate), CPU per message and p95 latency, each divided by the
floor's (1.0: as cheap as the floor; the target is within 2).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
from sqlalchemy import create_engine, func, select

from sockfleet.collector.schema import sockets
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from tests import postgres
from tests.benchmarks.usage import Postgres, own_cpu

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # for the tests' own helper processes (python -m tests....)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of process ``pid``, or of one of its threads (its main thread: ``thread=pid``)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, encoding="ascii") as stat:
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


# SOCKFLEET_BENCH_PROFILE=FILE runs the collector under cProfile, every thread's CPU time, written to FILE.
PROFILE = os.environ.get("SOCKFLEET_BENCH_PROFILE")
RUN_MODULE = ["-m", "tests.benchmarks.profile_server", PROFILE] if PROFILE else ["-m"]
COLLECTOR = [sys.executable, *RUN_MODULE, "sockfleet", "collector", "serve", "--insecure", "--allow-anonymous"]
FLOOR = [sys.executable, "-m", "tests.benchmarks.floor_collector"]


@contextmanager
def collector(db_url: str, summary: list[str]) -> Iterator[tuple[int, int]]:
    """A ``sockfleet collector serve`` process: yields (pid, port); its closing summary goes to ``summary``."""
    with server([*COLLECTOR, "--rate-limit", "0", "--listen", "127.0.0.1:0", "--db", db_url], summary) as found:
        yield found


@contextmanager
def server(command: list[str], summary: list[str]) -> Iterator[tuple[int, int]]:
    """A server process that names its port on its first line of stderr: yields (pid, port)."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    try:
        if not match:
            raise RuntimeError(f"{command[2]} did not start: {line}{proc.stderr.read()}")
        yield proc.pid, int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        summary.extend(line.strip() for line in proc.stderr if "applied" in line)
        proc.stderr.close()


@contextmanager
def databases(backend: str) -> Iterator[tuple[str, str]]:
    """Two fresh empty databases on one server (one SQLite folder): the collector's and the floor's."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/sockfleet.db", f"sqlite:///{folder}/floor.db"
    else:
        with postgres.cluster() as running:
            yield running.database(), running.database()


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


Figures = dict[str, tuple[float, ...]]  # phase -> (messages/s, CPU ms/msg, p95 ms[, p50 ms])


async def run_fleet(
    port: int,
    pid: int,
    args: argparse.Namespace,
    rows: Callable[[], int] | None,
    settle: Callable[[], None],
    database_cpu: Callable[[], float | None],
) -> Figures:
    """Every phase against the server at ``port`` (process ``pid``); ``rows``: how many socket rows it holds;
    ``settle``: run once the hosts' sockets are stored, before the deltas; ``database_cpu``: the database
    server's CPU seconds so far (None when it is not on this machine)."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, args.agents // 50))]
    agents = [SimulatedAgent(i, channels[i % len(channels)]) for i in range(args.agents)]
    await asyncio.gather(*(agent.open() for agent in agents))
    figures: Figures = {}
    churn = max(1, args.sockets // 100)

    async def timed(name: str, step: str, rounds: int, argument: int) -> None:
        cpu, loop, server, ours = cpu_seconds(pid), cpu_seconds(pid, pid), database_cpu(), own_cpu()
        wall, lat = await phase(agents, step, rounds, argument)
        count = len(agents) * rounds
        figures[name] = (count / wall, (cpu_seconds(pid) - cpu) / count * 1000, p95(lat) * 1000)
        figures[f"{name} loop"] = ((cpu_seconds(pid, pid) - loop) / count * 1000,)
        used = database_cpu()
        database = (used - server) / count * 1000 if used is not None and server is not None else float("nan")
        figures[f"{name} others"] = (database, (own_cpu() - ours) / count * 1000)

    await timed("new", "snapshot", 1, args.snapshot_sockets)
    await timed("known", "snapshot", 1, args.snapshot_sockets)  # as after a reconnection: unchanged
    await phase(agents, "snapshot", 1, args.sockets)  # back to the delta-phase size
    settle()
    await timed("delta", "delta", args.rounds, churn)
    before = rows() if rows is not None else 0
    await timed("heartbeat", "delta", args.rounds, 0)
    if rows is not None:
        figures["unchanged"] = ((rows() - before) / len(agents),)
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
    started = time.perf_counter()
    await asyncio.gather(*(paced(agent) for agent in agents))
    wall = time.perf_counter() - started
    lat = [x for agent in agents for x in agent.latencies]
    used = (cpu_seconds(pid) - cpu) / len(lat) * 1000
    figures["paced"] = (len(lat) / wall, used, p95(lat) * 1000, statistics.median(lat) * 1000)
    for agent in agents:
        await agent.close()
    for channel in channels:
        await channel.close(None)
    return figures


def analyzed(db_url: str) -> Callable[[], None]:
    """On PostgreSQL, the tables' statistics brought up to date, as autovacuum does within a minute or so on a
    running server: the deltas are then measured with the plans of a steady state, not those of a table that
    looks empty because it was filled a second ago.  SQLite keeps no statistics unless asked (and a collector
    never asks)."""

    def analyze() -> None:
        if not db_url.startswith("postgresql"):
            return
        engine = create_engine(db_url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        finally:
            engine.dispose()

    return analyze


def server_cpu(db_url: str) -> Callable[[], float | None]:
    """The database server's CPU seconds so far: PostgreSQL's processes on this machine (SQLite: none)."""
    if not db_url.startswith("postgresql"):
        return lambda: None
    engine = create_engine(db_url)
    try:
        server = Postgres(engine)
    finally:
        engine.dispose()
    return server.cpu


def socket_rows(db_url: str) -> Callable[[], int]:
    def count() -> int:
        engine = create_engine(db_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(sockets)).scalar_one())
        finally:
            engine.dispose()

    return count


def report(args: argparse.Namespace, ours: Figures, floor: Figures) -> list[str]:
    """The collector's figures, the floor's, and their ratios (collector / floor)."""
    churn = max(1, args.sockets // 100)
    names = {
        "new": f"full snapshots ({args.snapshot_sockets} sockets), new hosts:",
        "known": f"full snapshots ({args.snapshot_sockets} sockets), known hosts:",
        "delta": f"deltas ({churn} added, {churn} removed):",
        "heartbeat": "heartbeats (unchanged hosts):",
    }
    lines = []
    for key, name in names.items():
        rate, cpu, late = ours[key]
        lines.append(f"  {name:<44} {rate:8.1f}/s   collector CPU {cpu:6.2f} ms/msg   p95 send->ack {late:7.1f} ms")
    lines.append(f"  socket rows written per unchanged host: {ours['unchanged'][0]:g}")
    lines.append(
        "  of the CPU per message, the server's main (event loop) thread's: "
        + ", ".join(f"{key} {ours[key + ' loop'][0]:.2f} ms (floor {floor[key + ' loop'][0]:.2f})" for key in names)
    )
    if not math.isnan(ours["delta others"][0]):  # a server apart from the collector's process (PostgreSQL)
        lines.append(
            "  the database server's CPU per message (this generator's): "
            + ", ".join(
                f"{key} {ours[key + ' others'][0]:.2f} ms ({ours[key + ' others'][1]:.2f}; floor "
                f"{floor[key + ' others'][0]:.2f} ({floor[key + ' others'][1]:.2f}))"
                for key in names
            )
        )
    _, cpu, late, median = ours["paced"]
    lines.append(
        f"  paced deltas at {args.paced}/s:{'':<21} p50 send->ack {median:6.1f} ms   "
        f"p95 {late:6.1f} ms   collector CPU {cpu:.2f} ms/msg"
    )
    lines.append("  floor (decode, one bulk write, commit, ack), same run:")
    for key, name in names.items():
        rate, cpu, late = floor[key]
        lines.append(f"    {name:<42} {rate:8.1f}/s   floor CPU {cpu:6.2f} ms/msg   p95 send->ack {late:7.1f} ms")
    _, cpu, late, median = floor["paced"]
    lines.append(
        f"    paced deltas at {args.paced}/s:{'':<19} p50 send->ack {median:6.1f} ms   "
        f"p95 {late:6.1f} ms   floor CPU {cpu:.2f} ms/msg"
    )
    lines.append("  collector / floor (time per message at saturation, CPU per message, p95; 1.0 is as cheap):")
    for key, name in names.items():
        (rate, cpu, late), (floor_rate, floor_cpu, floor_late) = ours[key], floor[key]
        lines.append(
            f"    {name:<42} time {floor_rate / rate:6.2f}x   CPU {_ratio(cpu, floor_cpu)}   "
            f"p95 {_ratio(late, floor_late)}"
        )
    lines.append(
        f"    paced deltas at {args.paced}/s:{'':<19} p95 {_ratio(ours['paced'][2], floor['paced'][2])}   "
        f"CPU {_ratio(ours['paced'][1], floor['paced'][1])}"
    )
    return lines


def _ratio(ours: float, floor: float) -> str:
    return f"{ours / floor:6.2f}x" if floor > 0 else "      -"


def bench(backend: str, args: argparse.Namespace) -> None:
    summary: list[str] = []
    with databases(backend) as (db_url, floor_url):
        with server([*FLOOR, "--db", floor_url], []) as (pid, port):
            floor = asyncio.run(run_fleet(port, pid, args, None, analyzed(floor_url), server_cpu(floor_url)))
        with collector(db_url, summary) as (pid, port):
            ours = asyncio.run(run_fleet(port, pid, args, socket_rows(db_url), analyzed(db_url), server_cpu(db_url)))
    print(f"{backend}: {args.agents} agents", flush=True)
    print("\n".join(report(args, ours, floor)), flush=True)
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
        bench(backend, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
