"""``sockfleet collector serve``: receive agents' streams until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import signal
import sys
from collections.abc import Iterator
from datetime import timedelta

import grpc

from sockfleet import monitoring
from sockfleet.collector import db, retention, statistics
from sockfleet.collector.errors import UsageError
from sockfleet.collector.server import Collector, credentials, start, stop
from sockfleet.collector.store import Store
from sockfleet.collector.times import parse_duration
from sockfleet.commandline import printable

MAX_MESSAGE_MB = 2047  # gRPC counts a message's bytes in a signed 32-bit integer


async def serve(args: argparse.Namespace) -> int:
    creds = credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    if creds is None and not args.insecure:
        raise UsageError("collector serve needs --tls-cert and --tls-key, or --insecure for plain text")
    if not 0 <= args.rate_limit < math.inf:
        raise UsageError(f"--rate-limit {args.rate_limit}: 0 (no limit) or more scans a second")
    if not 0 < args.max_message_mb <= MAX_MESSAGE_MB:
        raise UsageError(
            f"--max-message-mb {args.max_message_mb}: more than 0, at most {MAX_MESSAGE_MB} (gRPC's limit)"
        )
    host, _, port = args.listen.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {printable(args.listen)!r}: not HOST:PORT (like [::]:50051)")
    skew = timedelta(seconds=parse_duration(args.max_clock_skew, "--max-clock-skew"))
    hello_timeout = parse_duration(args.hello_timeout, "--hello-timeout")
    engine = db.engine(args.db, init=args.init, ping=False)  # a message found its connection closed is applied again
    claimed = db.serving(engine)  # held while the process runs
    db.migrate(engine)
    retain = retention.ready(engine, args.retain)  # partitions ahead before any message; --retain
    server, port, service = await start(
        Store(engine, skew),
        args.listen,
        creds,
        anonymous=args.allow_anonymous,
        rate_limit=args.rate_limit,
        hello_timeout=hello_timeout,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
    )
    endpoint = await _metrics(args.metrics_listen, server, service)
    mode = "TLS" if creds else "plain text (--insecure)"
    mode += ", anonymous agents allowed" if args.allow_anonymous else ", enrolled agents only"
    served = f", metrics on http://{args.metrics_listen.rsplit(':', 1)[0]}:{endpoint.port}/metrics" if endpoint else ""
    print(
        f"sockfleet collector: listening on {args.listen.rsplit(':', 1)[0]}:{port} ({mode}), "
        f"database {db.shown(engine.url)}{served}",
        file=sys.stderr,
        flush=True,
    )
    upkeep = [asyncio.create_task(retention.keep(engine, retain))]
    if engine.dialect.name == "postgresql":
        upkeep.append(asyncio.create_task(statistics.keep(engine)))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    with steady_collections():
        await stopping.wait()
        for task in upkeep:
            task.cancel()  # a prune under way stops between two batches
        await stop(server, service)  # each stream finishes the message it is applying, then ends
    if endpoint is not None:
        endpoint.close()
    engine.dispose()  # closes the pool's connections (SQLite: its last one folds the WAL back into the file)
    print(f"sockfleet collector: stopped; {service.summary()}", file=sys.stderr, flush=True)
    if claimed is not None:
        os.close(claimed)
    return 0


async def _metrics(listen: str | None, server: grpc.aio.Server, service: Collector) -> monitoring.Endpoint | None:
    """``/metrics`` and ``/healthz`` on ``--metrics-listen``, when given; a bad address stops the collector."""
    if not listen:
        return None
    service.metrics.watch_hosts(service.store.engine)
    try:
        return monitoring.Endpoint(listen, service.metrics.registry, lambda: service.health.problem)
    except ValueError as exc:
        await stop(server, service, grace=0)
        raise UsageError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


@contextlib.contextmanager
def steady_collections() -> Iterator[None]:
    """Python's garbage collector set for serving: what start-up made (modules, compiled statements, the
    engine) is left out of collections, and the youngest generation is collected after 20,000 allocations
    rather than 700.  A message allocates thousands of short-lived objects that reference counting frees
    anyway; scanning them every 700 cost a quarter of a snapshot's CPU, little of a small delta's
    (bench_collector; the figures are in the README).
    Afterwards the collector goes back to the defaults, its start-up objects included, so that what holds a
    database connection is finalized at exit."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
