"""Benchmark: fleet questions over a realistic history, on SQLite and PostgreSQL.

    python -m tests.benchmarks.bench_history --hosts 1000 --sockets 500 --hours 6
    python -m tests.benchmarks.bench_history --hosts 1000 --sockets 500 --hours 168   # the full week

Builds the history a fleet leaves (written in bulk, as the collector's own insert paths write it):
each host has 10 listeners for the whole period and connections to listeners of other hosts; every
30 s 1% of its sockets close and as many open; every host reports every 30 s (an observation row).
Then it times, through the same query functions the CLI uses: ``ports --at`` (middle of the period),
``talks --at`` (same moment), ``history`` of one host, and ``diff`` between two moments an hour apart.
Each figure is the median of 3 runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from collector import changes, db, queries
from collector.schema import host_addresses, hosts, observations
from collector.store import INSERT_COLUMNS
from collector.talks import Window, edges
from tests import postgres

START = datetime(2026, 11, 1)
STEP = timedelta(seconds=30)
LISTENERS = 10


def address(host: int) -> str:
    return f"10.{host // 65536 % 256}.{host // 256 % 256}.{host % 256 or 1}"


def listener(host: int, n: int, start: datetime) -> tuple[Any, ...]:
    key = f"l{host}-{n}"
    return (host + 1, start, key, 1, "tcp", "inet", "stream", n + 1, "0.0.0.0", 8000 + n, None, None, None,
            "LISTEN", None, 0, "root", 100 + n, f"svc{n}", f"/usr/bin/svc{n}", 1, 0, 0)


def connection(host: int, serial: int, peer: int, start: datetime) -> tuple[Any, ...]:
    key = f"c{host}-{serial}"
    return (host + 1, start, key, 1, "tcp", "inet", "stream", 1000 + serial, address(host), 32768 + serial % 28000,
            address(peer), 8000 + serial % LISTENERS, None, "ESTABLISHED", None, 1000, "app", 500, "app",
            "/usr/bin/app", 1, 0, 0)


def history_rows(hosts_count: int, sockets: int, steps: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    """Every socket interval: (row without valid_to, valid_to)."""
    churn = max(1, sockets // 100)
    for host in range(hosts_count):
        for n in range(LISTENERS):
            yield (*listener(host, n, START), None)
        live = [(serial, START) for serial in range(sockets - LISTENERS)]
        serial = len(live)
        for step in range(1, steps):
            moment = START + step * STEP
            for _ in range(churn):
                index = rng.randrange(len(live))
                old, since = live[index]
                yield (*connection(host, old, (host + 1 + old) % hosts_count, since), moment)
                live[index] = (serial, moment)
                serial += 1
        for old, since in live:
            yield (*connection(host, old, (host + 1 + old) % hosts_count, since), None)


def load(engine: Engine, hosts_count: int, sockets: int, hours: float) -> int:
    steps = int(hours * 3600 / STEP.total_seconds())
    end = START + steps * STEP
    with engine.begin() as conn:
        conn.execute(insert(hosts), [{
            "id": h + 1, "host_id": f"id-{h}", "name": f"host-{h}", "agent_version": "bench", "boot_id": "",
            "interval_seconds": 30, "epoch": 1, "seq": steps, "last_taken_at": end, "complete": True,
            "first_seen": START, "last_seen": end} for h in range(hosts_count)])
        conn.execute(insert(host_addresses), [{
            "host_ref": h + 1, "netns": 1, "interface": "eth0", "address": address(h), "valid_from": START}
            for h in range(hosts_count)])
    rows = 0
    batch: list[tuple[Any, ...]] = []
    columns = (*INSERT_COLUMNS, "valid_to")
    postgres_ = engine.dialect.name == "postgresql"
    quoted = ", ".join(f'"{c}"' for c in columns)
    sqlite_insert = f"INSERT INTO sockets ({quoted}) VALUES ({', '.join('?' for _ in columns)})"
    for row in history_rows(hosts_count, sockets, steps, random.Random(7)):
        batch.append(row)
        if len(batch) == 50_000:
            rows += _write(engine, batch, postgres_, columns, sqlite_insert)
            batch = []
    rows += _write(engine, batch, postgres_, columns, sqlite_insert)
    observed = [{"host_ref": h + 1, "epoch": 1, "seq": s + 1, "kind": "heartbeat" if s else "snapshot",
                 "taken_at": START + s * STEP, "received_at": START + s * STEP, "added": 0, "removed": 0,
                 "changed": 0, "complete": True, "coverage": None} for h in range(hosts_count) for s in range(steps)]
    with engine.begin() as conn:
        for start in range(0, len(observed), 50_000):
            conn.execute(insert(observations), observed[start : start + 50_000])
    return rows


def _write(engine: Engine, batch: list[tuple[Any, ...]], postgres_: bool, columns: tuple[str, ...],
           sqlite_insert: str) -> int:
    if not batch:
        return 0
    with engine.begin() as conn:
        if postgres_:
            quoted = ", ".join(f'"{c}"' for c in columns)
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY sockets ({quoted}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)
        else:
            conn.exec_driver_sql(sqlite_insert, batch)
    return len(batch)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    runs = []
    result = None
    for _ in range(3):
        started = time.perf_counter()
        result = function()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result


def bench(backend: str, url: str, args: argparse.Namespace) -> None:
    engine = db.engine(url)
    db.migrate(engine)
    started = time.perf_counter()
    rows = load(engine, args.hosts, args.sockets, args.hours)
    loaded = time.perf_counter() - started
    middle = START + timedelta(hours=args.hours / 2)
    with engine.connect() as conn:
        questions: dict[str, Callable[[], Any]] = {
            "ports --at": lambda: queries.sockets_at(conn, middle, queries.Filters(), only_listening=True),
            "talks --at": lambda: edges(conn, Window(middle)),
            "history --host": lambda: changes.history(conn, "host-1"),
            "diff": lambda: changes.diff(conn, middle - timedelta(hours=min(1.0, args.hours / 4)), middle),
        }
        print(f"{backend}: {args.hosts} hosts x {args.sockets} sockets, {args.hours:g} h of 1% churn every 30 s: "
              f"{rows:,} socket rows, loaded in {loaded:.0f} s", flush=True)
        for name, question in questions.items():
            seconds, result = timed(question)
            size = len(result[0]) if isinstance(result, tuple) else len(result)
            print(f"  {name:16} {seconds * 1000:9.1f} ms   ({size:,} rows)", flush=True)
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    for backend in args.backends.split(","):
        with postgres.database(backend) as url:
            bench(backend, url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
