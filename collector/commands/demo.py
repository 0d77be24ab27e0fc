"""``sockfleet demo``: a collector on loopback and an agent of this machine, then what they found."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

from sqlalchemy import Engine, func, select

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
    note(f"collector on 127.0.0.1:{port} (plain text and no agent tokens: loopback only), database {url}")
    command = ["agent", "run", "--collector", f"127.0.0.1:{port}", "--insecure", "--interval", args.interval]
    agent = subprocess.Popen([sys.executable, "-m", "sockfleet", *command])  # noqa: S603 (our own agent)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    page: subprocess.Popen[str] | None = None
    try:
        await _first_scans(engine, agent, stopping)
        if not stopping.is_set():
            _found(engine, url)
            if not args.once:
                page = _web(demo_url(args.db))
                note(
                    f"the agent scans every {interval:g}s; ask with `sockfleet ports --db {url}` "
                    "in another terminal; Ctrl-C stops"
                )
                await stopping.wait()
    finally:
        _end([agent] if page is None else [page, agent])
        await stop(server, service, grace=2)
    return 0


def _web(url: str) -> subprocess.Popen[str] | None:
    """``sockfleet web`` on the demo's database, on 127.0.0.1:8080 or, if that is taken, a free port."""
    for listen in ("127.0.0.1:8080", "127.0.0.1:0"):
        command = [sys.executable, "-m", "sockfleet", "web", "--db", url, "--listen", listen, "--log-level", "warning"]
        page = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)  # noqa: S603 (our own page)
        assert page.stderr is not None
        line = page.stderr.readline()
        if "serving " in line:
            note(f"the map of who talks to whom: {line.split('serving ', 1)[1].split()[0]}")
            return page
        page.wait()
        page.stderr.close()
    note("the web page did not start (see `sockfleet web --help`)")
    return None


def _end(processes: list[subprocess.Popen[Any]]) -> None:
    """Stop the demo's processes together, and wait for each: one that has not ended after 10 s is killed."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def note(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


async def _first_scans(engine: Engine, agent: subprocess.Popen[bytes], stopping: asyncio.Event) -> None:
    """Wait for the agent's first snapshot and the scan after it, which holds the agent's own call to the
    collector."""
    started = now()
    seen = select(func.count()).select_from(observations).where(observations.c.received_at >= started)
    while not stopping.is_set():
        with engine.connect() as conn:
            if conn.execute(seen).scalar_one() >= 2:
                return
        if agent.poll() is not None:
            raise CollectorError(f"the agent exited with status {agent.returncode}")
        await asyncio.sleep(0.2)


def _found(engine: Engine, url: str) -> None:
    """The open ports and who talks to whom, as `sockfleet ports` and `sockfleet talks` show them."""
    note(f"first scans stored; open ports (sockfleet ports --db {url}):")
    with engine.connect() as conn:
        rows = queries.sockets_at(conn, None, queries.Filters(), only_listening=True)
    for row in rows:
        row["local"], row["remote"] = output.endpoint(row), questions.remote(row)
    output.write(rows, queries.SOCKET_FIELDS, sys.stdout, "table", questions.SOCKET_TABLE)
    sys.stdout.flush()
    note(f"who talks to whom (sockfleet talks --db {url}):")
    with engine.connect() as conn:
        questions.write_edges(talks.edges(conn, talks.Window(None)), "table", sys.stdout)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(demo(args))
