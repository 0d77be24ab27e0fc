"""``sockfleet agent ...``: the agent's commands.

Kept on argparse and the standard library so that a one-shot
``sockfleet agent snapshot`` starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys

from sockfleet.agent import __version__
from sockfleet.agent.errors import AgentError, UsageError
from sockfleet.agent.output import FORMATS, write
from sockfleet.agent.records import Coverage, Proto
from sockfleet.agent.snapshot import ALL_PROTOS, Scanner, default_sources
from sockfleet.agent.sources import SOURCES, by_name
from sockfleet.commandline import Parser, fail
from sockfleet.v1.limits import MAX_NAME


def parse_protos(text: str) -> frozenset[Proto]:
    """``"tcp,udp"`` → {TCP, UDP}; unknown names are a usage error."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    try:
        protos = frozenset(Proto(name) for name in names)
    except ValueError:
        known = ", ".join(p.value for p in Proto)
        raise UsageError(f"--proto takes a comma-separated list of {known}, not {text!r}") from None
    if not protos:
        raise UsageError("--proto names no protocol")
    return protos


def build_parser() -> Parser:
    parser = Parser(prog="sockfleet agent", description="Enumerate this host's sockets.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    snap = commands.add_parser("snapshot", help="print every socket of this host with its owner")
    snap.add_argument("--format", choices=FORMATS, default="table")
    snap.add_argument("--proto", default="tcp,udp,unix", help="comma-separated: tcp, udp, unix (default: all)")
    snap.add_argument("--listening", action="store_true", help="only sockets that wait for peers")
    snap.add_argument(
        "--namespaces",
        choices=("all", "current"),
        default="all",
        help="scan every network namespace (default) or only the current one",
    )
    snap.add_argument(
        "--source",
        choices=("auto", *(s.NAME for s in SOURCES)),
        default="auto",
        help="where sockets come from: " + "; ".join(f"{s.NAME}: {s.DESCRIPTION}" for s in SOURCES),
    )
    snap.add_argument("--host", help="host name to report (default: this machine's hostname)")
    snap.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)
    snap.add_argument(
        "--coverage", action="store_true", help="print what the scan could and could not see instead of the sockets"
    )
    snap.add_argument("--debug", action="store_true", help="show tracebacks")

    run = commands.add_parser("run", help="scan every interval and stream to a collector")
    run.add_argument("--collector", required=True, help="the collector's HOST:PORT")
    run.add_argument("--interval", default="15s", help="time between scans (default 15s)")
    run.add_argument("--host", help="host name and id to report (default: hostname and /etc/machine-id)")
    run.add_argument(
        "--namespaces",
        choices=("all", "current"),
        default="all",
        help="scan every network namespace (default) or only the current one",
    )
    run.add_argument("--ca", help="PEM file of the CA that signed the collector's certificate")
    run.add_argument("--insecure", action="store_true", help="plain text, without TLS (local trials only)")
    run.add_argument("--tls-cert", help="mutual TLS: this host's certificate (its common name is the host id)")
    run.add_argument("--tls-key", help="mutual TLS: the certificate's private key")
    run.add_argument(
        "--spool",
        help="folder where scans wait while the collector is away (kept across restarts; default: in memory only)",
    )
    run.add_argument(
        "--spool-max-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="bound of the spool; beyond it the oldest scans are dropped and the gap recorded (64 MiB)",
    )
    run.add_argument(
        "--token-file",
        help="file holding this host's token from `sockfleet collector enroll`, "
        "readable by its owner only (default: $SOCKFLEET_TOKEN)",
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="connecting, leaving and why are logged at info (default)",
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def parse_interval(text: str) -> float:
    """``"15s"`` → 15.0, ``"2m"`` → 120.0, ``"500ms"`` → 0.5; a bare number is seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    value = text.strip()
    unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
    try:
        seconds = float(value[: len(value) - len(unit)]) * units.get(unit, 1.0)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise UsageError(f"--interval: {text!r} is not a duration (like 15s, 2m, 500ms)")
    return seconds


def run_command(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from sockfleet.agent.stream import Streamer, identity

    interval = parse_interval(args.interval)
    if ":" not in args.collector:
        raise UsageError(f"--collector: {args.collector!r} is not HOST:PORT")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    if args.host is not None and not 0 < len(args.host) <= MAX_NAME:
        raise UsageError(f"--host: a host name has 1 to {MAX_NAME} characters")
    ident = identity(args.host)
    scanner = Scanner(ident.host_name, args.namespaces, with_addresses=True)
    token = read_token(args.token_file) if args.token_file else os.environ.get("SOCKFLEET_TOKEN")
    if not args.insecure:
        check_tls_files(args.ca, args.tls_cert, args.tls_key)
    from sockfleet.agent.spool import Spool

    if args.spool_max_bytes <= 0:
        raise UsageError("--spool-max-bytes must be more than 0")
    try:
        spool = Spool(args.spool, args.spool_max_bytes, ident.host_id)
    except OSError as exc:
        raise UsageError(f"--spool {args.spool}: {exc.strerror}") from exc
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    client_cert = (args.tls_cert, args.tls_key) if args.tls_cert else None
    streamer = Streamer(
        args.collector,
        scanner,
        ident,
        interval,
        insecure=args.insecure,
        ca_file=args.ca,
        token=token,
        spool=spool,
        client_cert=client_cert,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await streamer.run(stop)

    asyncio.run(main())
    return 0


def read_token(path: str) -> str:
    """The token in ``path``, a file only its owner may read (as ssh wants of a private key)."""
    try:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
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
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise UsageError(
                f"--tls-cert {cert} / --tls-key {key}: not a certificate and its key ({exc.reason or exc})"
            ) from exc
        except OSError as exc:
            raise UsageError(f"--tls-cert {cert} / --tls-key {key}: {exc.strerror}") from exc


def coverage_summary(coverage: Coverage) -> str | None:
    """One line about what the scan missed, or ``None`` when it saw everything."""
    parts = []
    failed = {s.source for s in coverage.sources if not s.ok}
    if coverage.namespaces_unscanned:
        parts.append(f"{len(coverage.namespaces_unscanned)} namespace(s) not scanned")
    if failed:
        parts.append("source(s) failed: " + ", ".join(sorted(failed)))
    if coverage.processes_unreadable:
        parts.append(f"{len(coverage.processes_unreadable)} process(es) unreadable, their sockets show no owner")
    return "coverage: " + "; ".join(parts) + " (--coverage for details)" if parts else None


def write_coverage(coverage: Coverage, fmt: str) -> None:
    if fmt == "json":
        import json
        from dataclasses import asdict

        json.dump(asdict(coverage), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for status in coverage.sources:
        outcome = f"{status.records} sockets" if status.ok else f"failed: {status.error}"
        print(f"source {status.source} netns {status.netns}: {status.seconds * 1000:.1f} ms, {outcome}")
    for ns, reason in coverage.namespaces_unscanned:
        print(f"netns {ns} not scanned: {reason}")
    if coverage.processes_unreadable:
        pids = " ".join(map(str, coverage.processes_unreadable))
        print(f"processes unreadable ({len(coverage.processes_unreadable)}): {pids}")


def snapshot_command(args: argparse.Namespace) -> int:
    protos = parse_protos(args.proto)
    sources = default_sources() if args.source == "auto" else (by_name(args.source),)
    scanner = Scanner(args.host, args.namespaces, protos or ALL_PROTOS, sources, args.proc_root, prefetch_owners=True)
    snap = scanner.snapshot()
    if args.coverage:
        write_coverage(snap.coverage, args.format)
        return 0
    sockets = [s for s in snap.sockets if s.is_listening()] if args.listening else None
    write(snap, sys.stdout, args.format, sockets)
    summary = coverage_summary(snap.coverage)
    if summary:
        print(summary, file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse(argv)
    try:
        if args.command == "snapshot":
            return snapshot_command(args)
        if args.command == "run":
            return run_command(args)
    except AgentError as exc:
        if args.debug:
            raise
        return fail("sockfleet", exc, exc.exit_status)
    parser.error(f"unknown command {args.command}")
    return 2


__all__ = ["__version__", "main"]
