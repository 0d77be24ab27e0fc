"""Benchmark: the web API over a fleet's history, against the same questions asked in the process.

    python -m tests.benchmarks.bench_web --hosts 250 --sockets 500 --hours 168   # the week of the issue
    python -m tests.benchmarks.bench_web --hosts 50 --sockets 200 --hours 6      # a quicker look

Builds the history of ``bench_history`` (SQLite, or ``--db URL``), starts a real ``sockfleet web`` on it
and asks each endpoint ``--requests`` times over HTTP, one request at a time: p50 and p95 per endpoint.
The peer, in the same run: the same command line answered in this process on an open engine (parser,
query, JSON into a string, no HTTP), so the ratio is what the server adds to the question itself.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

from sqlalchemy import Engine, text

from sockfleet.collector import db
from sockfleet.collector.cli import handler
from sockfleet.collector.times import rfc3339
from sockfleet.collector.web import api
from tests.benchmarks import bench_history
from tests.collector.harness import Web


def endpoints(hours: float) -> dict[str, dict[str, str]]:
    middle = bench_history.START + timedelta(hours=hours / 2)
    end = bench_history.START + timedelta(hours=hours)
    hour_before = middle - timedelta(hours=min(1.0, hours / 4))

    def stamp(moment: datetime) -> str:
        return rfc3339(moment) or ""

    return {
        "hosts": {},
        "hosts --at": {"at": stamp(middle)},
        "sockets --host": {"host": "host-1"},
        "ports --at": {"at": stamp(middle)},
        "talks --at": {"at": stamp(middle)},
        "talks --host --at": {"at": stamp(middle), "host": "host-1"},
        "history --host": {"host": "host-1", "since": stamp(max(bench_history.START, end - timedelta(days=1)))},
        "diff": {"from": stamp(hour_before), "to": stamp(middle)},
        "audit --at": {"at": stamp(middle)},
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def in_process(question: str, params: dict[str, str], engine: Engine) -> float:
    """Seconds to answer the question in this process: parsed, asked and written as JSON, on an open engine."""
    started = time.perf_counter()
    args = api._PARSER.parse(api.command_line(question, list(params.items())))
    args.db, args.policy = engine, None
    handler(args)(args, io.StringIO(), io.StringIO())
    return time.perf_counter() - started


def bench(url: str, args: argparse.Namespace) -> None:
    engine = db.engine(url)
    db.migrate(engine)
    with engine.connect() as conn:
        loaded_before = conn.execute(text("SELECT count(*) FROM hosts")).scalar()
    started = time.perf_counter()
    if loaded_before:  # a database of an earlier run (--db), built with the same --hosts, --sockets and --hours
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM sockets")).scalar() or 0
        how = "loaded before"
    else:
        rows = bench_history.load(engine, args.hosts, args.sockets, args.hours)
        how = f"loaded in {time.perf_counter() - started:.0f} s"
    print(f"{args.hosts} hosts x {args.sockets} sockets, {args.hours:g} h: {rows:,} socket rows, {how}", flush=True)
    try:
        with Web("--db", url, "--log-level", "warning") as server:
            print(
                f"  {'endpoint':18} {'p50 ms':>8} {'p95 ms':>8} {'in process p50':>15} {'ratio':>6}   rows", flush=True
            )
            for name, params in endpoints(args.hours).items():
                question = name.split()[0]
                path = f"/api/v1/{question}?{urllib.parse.urlencode(params)}"
                times, size = [], 0
                for _ in range(args.requests + 1):
                    started = time.perf_counter()
                    status, _, body = server.get(path)
                    times.append(time.perf_counter() - started)
                    assert status == 200, body
                    size = len(json.loads(body))
                times = times[1:]  # the first warms the caches
                runs = max(3, args.requests // 4)
                peer = statistics.median(in_process(question, params, engine) for _ in range(runs))
                p50, p95 = statistics.median(times), percentile(times, 0.95)
                print(
                    f"  {name:18} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {peer * 1000:15.1f} {p50 / peer:6.2f}   {size:,}",
                    flush=True,
                )
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=250)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--requests", type=int, default=20, help="requests per endpoint")
    parser.add_argument(
        "--db", help="a database to fill, or one an earlier run filled, kept afterwards (default: a new SQLite file)"
    )
    args = parser.parse_args(argv)
    if args.db:
        bench(args.db, args)
        return 0
    with TemporaryDirectory() as folder:
        bench(f"sqlite:///{Path(folder) / 'fleet.db'}", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
