"""Benchmark: a fleet of agents against K collectors on one PostgreSQL, and what a 50,000-host fleet needs.

    python -m tests.benchmarks.bench_fleet --collectors 1,2 --interval 2 --check 1,2

One process plays N hosts (``fleet_load.Agent``: a real gRPC stream each, a full snapshot on every new
stream, then a delta every interval with 0 to twice ``--churn`` of its sockets closed and as many opened),
spread over K ``sockfleet collector serve`` processes on one throwaway PostgreSQL database (plain text,
anonymous agents).  Hellos state a 30 s interval (``--announce``) whatever the agents' pace, so that a
collector holds a host's lease as it would at 30 s.  For each K:

1. a search for the largest N whose deltas are acknowledged within ``--p95`` seconds at the 95th percentile
   (sent to Ack, at the agent: queueing included): N grows by ``--growth`` until a level fails, then is
   bisected ``--refine`` times.  Each level lets new hosts join at ``--join-rate`` a second, waits until
   every agent's stream is up and one more interval, then measures ``--window`` seconds.  The interval may
   be shorter than 30 s to keep the search short; a fleet at 30 s sends the same messages a second with
   30 / interval times the hosts, which is the size reported;
2. for the K listed in ``--check``: that many hosts at a real 30 s interval (new hosts, one stream each),
   measured over ``--check-window`` seconds;
3. the CPU each component spends per message: the collectors (/proc/PID/stat), the PostgreSQL server
   (postmaster and every backend, those that ended included), and this generator; with the WAL,
   transactions and rows each message costs, and the history rows it adds;
4. a reconnect storm on the last fleet: collector 0 is stopped (SIGTERM) and started again; its agents
   fail over to the others or wait for it, and every one sends a full snapshot; recovery is the time from
   the stop until half of them, and the last of them, had it acknowledged.

Then a projection for ``--hosts`` hosts at a 30 s interval from the first K's per-message costs, and the
size of each history table per host and week.  The machine's cores are shared by the generator, the
collectors and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from tests import postgres
from tests.benchmarks.fleet_load import MAX_BACKOFF, Agent, Channels, Collectors, Tally
from tests.benchmarks.usage import Postgres, own_cpu

HISTORY = ("sockets", "flows", "observations", "closed_flows")
WEEK = 7 * 24 * 3600
REAL_INTERVAL = 30.0
CHECK_HOSTS = 1_000_000  # the host number of the first agent of the run at 30 s (hosts new to the database)
HEADROOM = 0.5  # the share of a core the steady load may use: the rest absorbs reconnect storms


@dataclass(frozen=True, slots=True)
class Sample:
    moment: float
    acks: int
    collectors: float
    postgres: float | None
    generator: float
    wal: int
    commits: int
    rows: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What the messages between two samples cost, per message (CPU in ms, WAL in bytes)."""

    seconds: float
    messages: int
    collector_ms: float
    postgres_ms: float | None
    generator_ms: float
    wal_bytes: float
    commits: float
    rows: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        pg = f"{self.postgres_ms:.2f}" if self.postgres_ms is not None else "n/a"
        return (
            f"{self.rate:.1f} msg/s; CPU per message: collectors {self.collector_ms:.2f} ms, PostgreSQL {pg} ms, "
            f"generator {self.generator_ms:.2f} ms; WAL {self.wal_bytes / 1024:.1f} KiB, "
            f"{self.commits:.1f} commits, {self.rows:.0f} rows written"
        )


@dataclass(frozen=True, slots=True)
class Level:
    agents: int
    interval: float
    ok: bool
    p50: float
    p95: float
    usage: Usage
    history_rows: dict[str, float]  # rows added per message, per history table
    note: str = ""


class Fleet:
    """The agents, the collectors, and the counters of a run."""

    def __init__(self, collectors: Collectors, pg: Postgres, args: argparse.Namespace) -> None:
        self.collectors = collectors
        self.pg = pg
        self.args = args
        self.tally = Tally()
        self.channels = Channels(args.per_channel)
        self.agents: list[Agent] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.interval = args.interval  # of the agents that join from now on
        self.window = args.window
        self.first = 0  # the host number of agent 0

    async def resize(self, count: int) -> None:
        """Add agents (joining at ``--join-rate`` a second) or stop the newest ones."""
        if len(self.agents) > count:
            for agent in self.agents[count:]:
                agent.stop.set()
            await asyncio.gather(*self.tasks[count:])
            del self.agents[count:], self.tasks[count:]
        joining = count - len(self.agents)
        for n in range(joining):
            agent = Agent(
                self.first + len(self.agents),
                self.collectors.targets,
                self.channels,
                self.interval,
                self.args.sockets,
                self.args.churn,
                self.args.announce,
            )
            self.agents.append(agent)
            self.tasks.append(asyncio.create_task(agent.run(self.tally, n / self.args.join_rate)))

    async def settle(self, timeout: float) -> bool:
        """Wait until every agent's stream is up (its full snapshot acknowledged); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while any(agent.connected is None for agent in self.agents):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def sample(self) -> Sample:
        wal, commits, rows = self.pg.counters()
        return Sample(
            time.monotonic(),
            self.tally.count(),
            sum(self.collectors.cpu()),
            self.pg.cpu(),
            own_cpu(),
            wal,
            commits,
            rows,
        )

    def history_rows(self) -> dict[str, int]:
        with self.pg.engine.connect() as conn:
            return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in HISTORY}

    async def close(self) -> None:
        await self.resize(0)
        await self.channels.close()


def usage(a: Sample, b: Sample) -> Usage:
    count = max(1, b.acks - a.acks)
    pg = (b.postgres - a.postgres) * 1000 / count if a.postgres is not None and b.postgres is not None else None
    return Usage(
        b.moment - a.moment,
        b.acks - a.acks,
        (b.collectors - a.collectors) * 1000 / count,
        pg,
        (b.generator - a.generator) * 1000 / count,
        (b.wal - a.wal) / count,
        (b.commits - a.commits) / count,
        (b.rows - a.rows) / count,
    )


def percentile(values: list[float], share: float) -> float:
    if not values:
        return math.inf
    if len(values) < 20:
        return max(values)
    return statistics.quantiles(values, n=100)[round(share * 100) - 1]


def latencies(tally: Tally, since: float, until: float, kind: str, agents: set[int] | None = None) -> list[float]:
    """Send-to-Ack times of the messages of ``kind`` sent in [since, until), and of every message still
    unacknowledged at ``until`` (counted as waiting until then: a stalled collector is not a fast one)."""
    done = [
        lat
        for sent, lat, what, index in tally.acks
        if since <= sent < until and what == kind and (agents is None or index in agents)
    ]
    waiting = [until - sent for index, sent in tally.waiting.items() if agents is None or index in agents]
    return done + [lat for lat in waiting if lat > 0]


async def level(fleet: Fleet, count: int) -> Level:
    args = fleet.args
    await fleet.resize(count)
    joined = await fleet.settle(2 * count / args.join_rate + args.settle)
    if not joined:
        empty = Usage(0, 0, 0, None, 0, 0, 0, 0)
        return Level(count, fleet.interval, False, math.inf, math.inf, empty, {}, "agents still connecting")
    await asyncio.sleep(fleet.interval)
    rows_before = fleet.history_rows()
    a = fleet.sample()
    await asyncio.sleep(fleet.window)
    b = fleet.sample()
    rows_after = fleet.history_rows()
    lat = latencies(fleet.tally, a.moment, b.moment, "delta")
    cost = usage(a, b)
    added = {table: (rows_after[table] - rows_before[table]) / max(1, cost.messages) for table in HISTORY}
    offered = count / fleet.interval
    p95 = percentile(lat, 0.95)
    ok = p95 <= args.p95 and cost.rate >= 0.9 * offered
    note = "" if cost.rate >= 0.9 * offered else f"only {cost.rate:.0f} of {offered:.0f} msg/s"
    return Level(count, fleet.interval, ok, percentile(lat, 0.5), p95, cost, added, note)


def show(result: Level) -> None:
    hosts = round(result.agents * REAL_INTERVAL / result.interval)
    verdict = "ok" if result.ok else "too slow"
    print(
        f"  {result.agents:6d} agents every {result.interval:g} s (= {hosts:,} hosts at 30 s): p50 "
        f"{result.p50 * 1000:.0f} ms, p95 {result.p95 * 1000:.0f} ms: {verdict}{'; ' + result.note if result.note else ''}",
        flush=True,
    )
    if result.usage.messages:
        print(f"         {result.usage.line()}", flush=True)


async def search(fleet: Fleet) -> Level | None:
    """The largest level that passes: grow until one fails, then bisect."""
    args = fleet.args
    best: Level | None = None
    count, failed = args.start, None
    while count <= args.max_agents:
        result = await level(fleet, count)
        show(result)
        if not result.ok:
            failed = count
            break
        best, count = result, math.ceil(count * args.growth)
    for _ in range(args.refine):
        if failed is None:
            break
        low = best.agents if best is not None else 0
        middle = (low + failed) // 2
        if middle in (low, failed) or middle == 0:
            break
        result = await level(fleet, middle)
        show(result)
        if result.ok:
            best = result
        else:
            failed = middle
    return best


@dataclass(frozen=True, slots=True)
class Storm:
    affected: int
    away: float
    half: float  # seconds from the stop until half the agents had their snapshot acknowledged
    recovery: float  # ... until the last of them
    snapshot_p95: float
    others_p95: float
    usage: Usage
    snapshots: int
    deltas: int


async def storm(fleet: Fleet) -> Storm | None:
    """Restart collector 0 and time its agents' return (each with a full snapshot)."""
    args = fleet.args
    if not await fleet.settle(args.settle):
        return None
    await asyncio.sleep(fleet.interval)
    target = fleet.collectors.targets[0]
    affected = {agent.index for agent in fleet.agents if agent.connected == target}
    a = fleet.sample()
    away, startup = await asyncio.to_thread(fleet.collectors.restart, 0)
    # Long enough for a lease the stopped collector kept to lapse (3 announced intervals) and a retry after.
    # Every snapshot may take 0.1 s of the machine's cores.
    deadline = time.monotonic() + args.settle + 3 * args.announce + MAX_BACKOFF + 0.1 * len(affected)
    while time.monotonic() < deadline and not all(fleet.tally.resynced.get(i, 0) > a.moment for i in affected):
        await asyncio.sleep(0.05)
    returned = [fleet.tally.resynced[i] for i in affected if fleet.tally.resynced.get(i, 0) > a.moment]
    back = max(returned, default=a.moment) if len(returned) == len(affected) else math.inf
    half = sorted(returned)[len(affected) // 2] if 2 * len(returned) > len(affected) else math.inf
    b = fleet.sample()
    b = replace(b, collectors=b.collectors - startup)  # the messages' CPU, not the new process's start
    snapshots = [lat for sent, lat, kind, _ in fleet.tally.acks[a.acks : b.acks] if kind == "snapshot"]
    others = {agent.index for agent in fleet.agents} - affected
    deltas = [lat for sent, lat, kind, _ in fleet.tally.acks[a.acks : b.acks] if kind == "delta"]
    other_deltas = latencies(fleet.tally, a.moment, b.moment, "delta", others)
    return Storm(
        len(affected),
        away,
        half - a.moment,
        back - a.moment,
        percentile(snapshots, 0.95),
        percentile(other_deltas, 0.95),
        usage(a, b),
        len(snapshots),
        len(deltas),
    )


def snapshot_cost(steady: Usage, during: Storm) -> Usage:
    """What one full snapshot of a known host cost in the storm: its CPU less its deltas' at the steady cost."""
    total, snaps = during.usage, max(1, during.snapshots)
    msgs = total.messages

    def each(value: float, per_delta: float) -> float:
        return max(0.0, (value * msgs - per_delta * during.deltas) / snaps)

    pg = None
    if total.postgres_ms is not None and steady.postgres_ms is not None:
        pg = each(total.postgres_ms, steady.postgres_ms)
    return replace(
        total,
        messages=during.snapshots,
        collector_ms=each(total.collector_ms, steady.collector_ms),
        postgres_ms=pg,
        generator_ms=each(total.generator_ms, steady.generator_ms),
        wal_bytes=each(total.wal_bytes, steady.wal_bytes),
        commits=each(total.commits, steady.commits),
        rows=each(total.rows, steady.rows),
    )


def table_sizes(engine: Engine) -> dict[str, tuple[int, int, int]]:
    """Per history table: closed (or, without open rows, all) rows, and their partitions' table and index bytes.

    A week of history is almost all closed rows; the partition of open rows (``<table>_open``) is left out
    for ``sockets`` and ``flows``, whose open rows stay as many as the fleet's live sockets; so are empty
    partitions (days ahead), whose indexes hold a page each.
    """
    sizes = {}
    with engine.connect() as conn:
        for table in HISTORY:
            leaves = conn.execute(
                text(
                    "SELECT relid::text, pg_table_size(relid), pg_indexes_size(relid) FROM pg_partition_tree(:t) "
                    "WHERE isleaf AND relid::text <> :open AND pg_table_size(relid) > 0"
                ),
                {"t": table, "open": f"{table}_open"},
            ).all()
            rows = conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE tableoid::regclass::text <> :open"), {"open": f"{table}_open"}
            ).scalar_one()
            sizes[table] = (rows, sum(leaf[1] for leaf in leaves), sum(leaf[2] for leaf in leaves))
    return sizes


def report_sizes(sizes: dict[str, tuple[int, int, int]], per_message: dict[str, float]) -> float:
    """Print each table's bytes per row and per host per week at a 30 s interval; returns the total per host."""
    messages = WEEK / REAL_INTERVAL
    total = 0.0
    for table, (rows, data, index) in sizes.items():
        if not rows:
            continue
        week_rows = per_message.get(table, 0.0) * messages
        bytes_week = week_rows * (data + index) / rows
        total += bytes_week
        print(
            f"  {table:13s} {data / rows:6.0f} B/row + {index / rows:5.0f} B of indexes; "
            f"{per_message.get(table, 0.0):5.2f} rows/message = {week_rows:9,.0f} rows, "
            f"{bytes_week / 2**20:7.1f} MiB per host per week",
            flush=True,
        )
    print(f"  in all: {total / 2**20:.1f} MiB per host per week", flush=True)
    return total


def project(cost: Usage, snap: Usage | None, per_host_week: float, hosts: int) -> None:
    """Cores and storage for ``hosts`` hosts every 30 s from the measured costs."""
    rate = hosts / REAL_INTERVAL
    collector_cores = rate * cost.collector_ms / 1000
    print(f"projection for {hosts:,} hosts every 30 s ({rate:,.0f} msg/s, the measured churn):", flush=True)
    print(
        f"  collectors: {collector_cores:.1f} cores busy; {math.ceil(collector_cores / HEADROOM)} cores "
        f"at {HEADROOM:.0%} load",
        flush=True,
    )
    if cost.postgres_ms is not None:
        pg_cores = rate * cost.postgres_ms / 1000
        print(
            f"  PostgreSQL: {pg_cores:.1f} cores busy; {math.ceil(pg_cores / HEADROOM)} cores at {HEADROOM:.0%} load",
            flush=True,
        )
    print(
        f"  PostgreSQL writes: {rate * cost.commits:,.0f} commits/s, {rate * cost.rows:,.0f} rows/s, "
        f"WAL {rate * cost.wal_bytes / 2**20:.1f} MiB/s; history {per_host_week * hosts / 2**40:.2f} TiB per week",
        flush=True,
    )
    if snap is not None and snap.postgres_ms is not None:
        spare = (1 - HEADROOM) / HEADROOM  # spare cores per busy core at that load
        whole = hosts * snap.collector_ms / 1000 / (spare * collector_cores) if collector_cores else math.inf
        db = hosts * snap.postgres_ms / 1000 / (spare * rate * cost.postgres_ms / 1000) if cost.postgres_ms else 0
        print(
            f"  every host's full snapshot at once (all collectors restarted): {whole:.0f} s of the collectors' "
            f"spare cores, {db:.0f} s of PostgreSQL's",
            flush=True,
        )


@dataclass(frozen=True, slots=True)
class Run:
    """One K's figures: the largest fleet that passed, the same message rate at 30 s, the storm, the sizes."""

    best: Level
    checked: Level | None
    storm: Storm | None
    sizes: dict[str, tuple[int, int, int]]

    @property
    def steady(self) -> Level:
        """The costs to project from: the fleet at 30 s when it passed, else the search's largest."""
        return self.checked if self.checked is not None and self.checked.ok else self.best


async def run_k(count: int, url: str, folder: Path, args: argparse.Namespace) -> Run | None:
    collectors = Collectors(url, folder)
    engine = create_engine(url)
    fleet: Fleet | None = None
    try:
        await asyncio.to_thread(collectors.start, count)
        fleet = Fleet(collectors, Postgres(engine), args)
        print(f"K = {count} collector(s), one PostgreSQL:", flush=True)
        best = await search(fleet)
        if best is None:
            print("  no level passed", flush=True)
            return None
        hosts = round(best.agents * REAL_INTERVAL / args.interval)
        print(
            f"  largest fleet with p95 <= {args.p95:g} s: {best.agents} agents every {args.interval:g} s = "
            f"{hosts:,} hosts at 30 s",
            flush=True,
        )
        checked = None
        if count in args.check:  # the same messages a second from as many hosts as they stand for
            await fleet.resize(0)
            fleet.interval, fleet.window, fleet.first = REAL_INTERVAL, args.check_window, CHECK_HOSTS
            checked = await level(fleet, hosts)
            show(checked)
        else:
            await fleet.resize(best.agents)
        during = await storm(fleet)
        if during is not None:
            show_storm(during)
        print(f"  stream endings seen by agents: {dict(fleet.tally.refused) or 'none'}", flush=True)
        await fleet.close()
        return Run(best, checked, during, table_sizes(engine))
    finally:
        if fleet is not None:
            await fleet.close()
        await asyncio.to_thread(collectors.close)
        engine.dispose()


def show_storm(during: Storm) -> None:
    back = f"half back {during.half:.1f} s and all back {during.recovery:.1f} s after the stop"
    others = "no other agents"
    if not math.isinf(during.others_p95):
        others = f"other agents' deltas p95 {during.others_p95 * 1000:.0f} ms"
    if math.isinf(during.recovery):
        back = "not all back by the deadline"
    print(
        f"  storm: collector 0 restarted (away {during.away:.1f} s), {during.affected} agents sent full "
        f"snapshots; {back}; snapshot p95 {during.snapshot_p95 * 1000:.0f} ms; {others}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results: dict[int, Run | None] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sockfleet-fleet-") as scratch,
        postgres.cluster({"fsync": "on"} if args.fsync else None) as cluster,
    ):
        for count in args.collectors:
            folder = Path(args.logs or scratch) / f"k{count}"
            folder.mkdir(parents=True, exist_ok=True)
            results[count] = asyncio.run(run_k(count, cluster.database(), folder, args))
    summarise({count: run for count, run in results.items() if run is not None}, args)
    return 0


def summarise(runs: dict[int, Run], args: argparse.Namespace) -> None:
    if not runs:
        return
    print("per-message costs (deltas) at the largest fleet that passed, and at 30 s:", flush=True)
    first_k, first = next(iter(runs.items()))
    for count, run in runs.items():
        for what, result in (("search", run.best), ("at 30 s", run.checked)):
            if result is None:
                continue
            peer = first.checked if what == "at 30 s" else first.best
            ratio = ""
            if count != first_k and peer is not None and peer.usage.collector_ms:
                ratio = (
                    f" (x{result.usage.collector_ms / peer.usage.collector_ms:.2f} the collector CPU of K = {first_k})"
                )
            print(f"  K = {count}, {what}: {result.usage.line()}{ratio}", flush=True)
    steady = first.steady
    snap = snapshot_cost(steady.usage, first.storm) if first.storm is not None and first.storm.snapshots else None
    if snap is not None:
        print(
            f"  a known host's full snapshot ({args.sockets} sockets), from the K = {first_k} storm: {snap.line()}",
            flush=True,
        )
    print(f"history per host and week at 30 s (from the K = {first_k} run):", flush=True)
    total = report_sizes(first.sizes, steady.history_rows)
    project(steady.usage, snap, total, args.hosts)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collectors", default="1,2", help="collector counts to measure, e.g. 1,2")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between an agent's scans")
    parser.add_argument(
        "--announce", type=float, default=REAL_INTERVAL, help="the interval the agents' hellos state (s)"
    )
    parser.add_argument("--sockets", type=int, default=500, help="sockets per host")
    parser.add_argument("--churn", type=float, default=0.02, help="mean share of sockets replaced per scan")
    parser.add_argument("--p95", type=float, default=1.0, help="the acknowledgement time to keep (s)")
    parser.add_argument("--start", type=int, default=100, help="agents in the first level")
    parser.add_argument("--growth", type=float, default=1.5, help="agents of a level / the previous one's")
    parser.add_argument("--refine", type=int, default=2, help="bisections after the first level that fails")
    parser.add_argument("--max-agents", type=int, default=20_000)
    parser.add_argument("--window", type=float, default=12.0, help="seconds measured per level")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds agents have to connect")
    parser.add_argument("--join-rate", type=float, default=30.0, help="new hosts per second")
    parser.add_argument(
        "--check", default="", help="collector counts whose largest fleet is run again at 30 s (as many hosts)"
    )
    parser.add_argument("--check-window", type=float, default=60.0, help="seconds measured at 30 s")
    parser.add_argument("--per-channel", type=int, default=1, help="agents per gRPC connection")
    parser.add_argument("--hosts", type=int, default=50_000, help="the fleet to project for")
    parser.add_argument("--fsync", action="store_true", help="PostgreSQL flushes each commit (default: fsync=off)")
    parser.add_argument("--logs", help="folder to keep the collectors' logs in (default: thrown away)")
    parser.add_argument("--smoke", action="store_true", help="a few agents for a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.interval, args.sockets, args.start, args.max_agents, args.refine = 0.5, 40, 4, 4, 0
        args.window, args.settle, args.join_rate, args.announce = 1.0, 20.0, 50.0, 0.5
    args.collectors = [int(k) for k in args.collectors.split(",")]
    args.check = [int(k) for k in args.check.split(",") if k]
    return args


if __name__ == "__main__":
    sys.exit(main())
