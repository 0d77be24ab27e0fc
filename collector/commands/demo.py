"""``sockfleet demo``: a collector on loopback and an agent of this machine, then what they found."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys

from sqlalchemy import func, select

from sockfleet.collector import db, output, queries, talks
from sockfleet.collector.commands import questions
from sockfleet.collector.errors import CollectorError
from sockfleet.collector.schema import observations
from sockfleet.collector.server import start, stop
from sockfleet.collector.store import Store
from sockfleet.collector.times import now, parse_duration


def demo_url(url: str | None) -> str:
    """The demo keeps its own database (``demo.db`` beside the default one) unless ``--db`` names one."""
    return url or f"sqlite:///{db.data_dir() / 'demo.db'}"


async def demo(args: argparse.Namespace) -> int:
    """Collector on loopback (plain text, which is safe there), one agent of this machine, the open ports and
    who talks to whom."""
    interval = parse_duration(args.interval)
    engine = db.engine(demo_url(args.db))
    db.migrate(engine)
    url = db.shown(engine.url)
    server, port, service = await start(Store(engine), "127.0.0.1:0", None, anonymous=True)
    print(
        f"demo: collector on 127.0.0.1:{port} (plain text and no agent tokens: loopback only), database {url}",
        file=sys.stderr,
    )
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockfleet",
            "agent",
            "run",
            "--collector",
            f"127.0.0.1:{port}",
            "--insecure",
            "--interval",
            args.interval,
        ]
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        started = now()
        while not stopping.is_set():
            with engine.connect() as conn:
                seen = conn.execute(
                    select(func.count()).select_from(observations).where(observations.c.received_at >= started)
                ).scalar_one()
            if seen >= 2:  # the first snapshot, and the next scan: it holds the agent's own call to the collector
                break
            if agent.poll() is not None:
                raise CollectorError(f"the agent exited with status {agent.returncode}")
            await asyncio.sleep(0.2)
        if not stopping.is_set():
            print(f"demo: first scans stored; open ports (sockfleet ports --db {url}):", file=sys.stderr)
            with engine.connect() as conn:
                rows = queries.sockets_at(conn, None, queries.Filters(), only_listening=True)
            for row in rows:
                row["local"], row["remote"] = output.endpoint(row), questions.remote(row)
            output.write(rows, queries.SOCKET_FIELDS, sys.stdout, "table", questions.SOCKET_TABLE)
            sys.stdout.flush()
            print(f"demo: who talks to whom (sockfleet talks --db {url}):", file=sys.stderr)
            with engine.connect() as conn:
                questions.write_edges(talks.edges(conn, talks.Window(None)), "table")
            sys.stdout.flush()
            if not args.once:
                print(
                    f"demo: the agent scans every {interval:g}s; ask with `sockfleet ports --db {url}` "
                    "in another terminal; Ctrl-C stops",
                    file=sys.stderr,
                    flush=True,
                )
                await stopping.wait()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
        await stop(server, service, grace=2)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(demo(args))
