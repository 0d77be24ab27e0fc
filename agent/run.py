"""``sockfleet agent run``: the agent's long-running command, checked before it starts (interval, token file,
TLS files, spool) and run until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from typing import TYPE_CHECKING

from sockfleet import logs
from sockfleet.agent import targets
from sockfleet.agent.errors import UsageError
from sockfleet.agent.events import Events
from sockfleet.agent.memory import Releasing, trimmer
from sockfleet.agent.snapshot import Scanner
from sockfleet.agent.spool import Spool
from sockfleet.agent.stream import Streamer, identity
from sockfleet.private import exposed_mode, key_pair_problem
from sockfleet.v1.limits import MAX_NAME

if TYPE_CHECKING:
    from sockfleet.monitoring import Endpoint

log = logging.getLogger("sockfleet.agent")


MIN_INTERVAL, MAX_INTERVAL = 0.01, 86400.0  # seconds between scans


def parse_interval(text: str) -> float:
    """``"15s"`` → 15.0, ``"2m"`` → 120.0, ``"500ms"`` → 0.5; a bare number is seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    value = text.strip()
    unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
    try:
        seconds = float(value[: len(value) - len(unit)]) * units.get(unit, 1.0)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or not math.isfinite(seconds):
        raise UsageError(f"--interval: {text!r} is not a duration (like 15s, 2m, 500ms)")
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise UsageError(f"--interval {text}: from {MIN_INTERVAL:g}s to a day")
    return seconds


def run_command(args: argparse.Namespace) -> int:
    """Check every option first (one line and exit status 2 for a mistake), then stream until SIGINT or SIGTERM."""
    interval = parse_interval(args.interval)
    targets.parse(args.collector)  # one line naming a mistaken entry
    if args.host is not None and not 0 < len(args.host) <= MAX_NAME:
        raise UsageError(f"--host: a host name has 1 to {MAX_NAME} characters")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not 0 < args.spool_max_bytes <= 1 << 40:
        raise UsageError("--spool-max-bytes: from 1 byte to 1 TiB")
    logs.setup(args.log_level, args.log_format)
    streamer = _streamer(args, interval)
    endpoint = _metrics(args.metrics_listen, streamer) if args.metrics_listen else None
    _release_memory(streamer)
    try:
        asyncio.run(_until_signalled(streamer))
    finally:
        if endpoint is not None:
            endpoint.close()
    return 0


def _metrics(listen: str, streamer: Streamer) -> Endpoint:
    """``/metrics`` and ``/healthz`` on ``--metrics-listen``; prometheus_client is loaded only then."""
    from sockfleet.agent.metrics import AgentMetrics
    from sockfleet.monitoring import Endpoint

    metrics = AgentMetrics(streamer.spool, streamer.interval)
    try:
        endpoint = Endpoint(listen, metrics.registry, metrics.problem)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    streamer.observer = metrics
    log.info("serving metrics on http://%s:%d/metrics", listen.rsplit(":", 1)[0], endpoint.port)
    return endpoint


def _release_memory(streamer: Streamer) -> None:
    """After each scan, what it freed goes back to the system (``agent.memory``) where the C library can."""
    release = trimmer()
    if release is not None:
        streamer.observer = Releasing(streamer.observer, release)


def _streamer(args: argparse.Namespace, interval: float) -> Streamer:
    ident = identity(args.host)
    token = read_token(args.token_file) if args.token_file else os.environ.get("SOCKFLEET_TOKEN")
    if not args.insecure:
        check_tls_files(args.ca, args.tls_cert, args.tls_key)
    try:
        spool = Spool(args.spool, args.spool_max_bytes, ident.host_id)
    except OSError as exc:
        raise UsageError(f"--spool {args.spool}: {exc.strerror}") from exc
    scanner = Scanner(ident.host_name, args.namespaces, with_addresses=True)
    client_cert = (args.tls_cert, args.tls_key) if args.tls_cert else None
    events = None if args.no_events or not sys.platform.startswith("linux") else Events()
    return Streamer(
        args.collector,
        scanner,
        ident,
        interval,
        insecure=args.insecure,
        ca_file=args.ca,
        token=token,
        spool=spool,
        client_cert=client_cert,
        events=events,
    )


async def _until_signalled(streamer: Streamer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await streamer.run(stop)


def read_token(path: str) -> str:
    """The token in ``path``, a file only its owner may read (as ssh wants of a private key)."""
    try:
        mode = exposed_mode(path)
        if mode is not None:
            raise UsageError(f"--token-file {path}: other users may read it (mode {mode:04o}); `chmod 600 {path}`")
        with open(path, encoding="ascii") as file:
            token = file.read().strip()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"--token-file {path}: not a token (it is not text)") from exc
    if not token or any(c.isspace() for c in token):
        raise UsageError(f"--token-file {path}: not a token (one line, as `sockfleet collector enroll` prints it)")
    return token


def check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """Read the TLS files now, so that a wrong one is one line at start rather than a retry forever."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise UsageError(f"--ca {ca}: not a PEM certificate ({exc.reason or exc})") from exc
        except OSError as exc:
            raise UsageError(f"--ca {ca}: {exc.strerror}") from exc
    problem = key_pair_problem(cert, key) if cert and key else None
    if problem:
        raise UsageError(problem)
