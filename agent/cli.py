"""``sockfleet agent ...``: the agent's commands, ``snapshot`` here and ``run`` in ``agent.run``.

Kept on argparse and the standard library so that a one-shot
``sockfleet agent snapshot`` starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import sys

from sockfleet.agent import __version__
from sockfleet.agent.errors import AgentError, UsageError
from sockfleet.agent.output import FORMATS, write
from sockfleet.agent.records import Coverage, Proto
from sockfleet.agent.snapshot import ALL_PROTOS, Scanner, default_sources
from sockfleet.agent.sources import SOURCES, by_name
from sockfleet.commandline import CONFIG, LOG_FORMAT, Option, Parser, add_options, fail
from sockfleet.config import configurable

NAMESPACES: Option = (
    ("--namespaces",),
    {
        "choices": ("all", "current"),
        "default": "all",
        "help": "scan every network namespace (default) or only the current one",
    },
)
DEBUG: Option = (("--debug",), {"action": "store_true", "help": "show tracebacks"})
SNAPSHOT: tuple[Option, ...] = (
    (("--format",), {"choices": FORMATS, "default": "table"}),
    (("--proto",), {"default": "tcp,udp,unix", "help": "comma-separated: tcp, udp, unix (default: all)"}),
    (("--listening",), {"action": "store_true", "help": "only sockets that wait for peers"}),
    NAMESPACES,
    (
        ("--source",),
        {
            "choices": ("auto", *(s.NAME for s in SOURCES)),
            "default": "auto",
            "help": "where sockets come from: " + "; ".join(f"{s.NAME}: {s.DESCRIPTION}" for s in SOURCES),
        },
    ),
    (("--host",), {"help": "host name to report (default: this machine's hostname)"}),
    (("--proc-root",), {"default": "/proc", "help": argparse.SUPPRESS}),
    (
        ("--coverage",),
        {"action": "store_true", "help": "print what the scan could and could not see instead of the sockets"},
    ),
    DEBUG,
)
RUN: tuple[Option, ...] = (
    CONFIG,
    (
        ("--collector",),
        {
            "required": True,
            "help": "the collector's HOST:PORT; several, comma-separated, are tried in a shuffled order and the "
            "agent moves to the next when one fails (a name with several addresses counts as several)",
        },
    ),
    (("--interval",), {"default": "15s", "help": "time between scans (default 15s)"}),
    (("--host",), {"help": "host name and id to report (default: hostname and /etc/machine-id)"}),
    NAMESPACES,
    (("--ca",), {"help": "PEM file of the CA that signed the collector's certificate"}),
    (("--insecure",), {"action": "store_true", "help": "plain text, without TLS (local trials only)"}),
    (
        ("--no-events",),
        {
            "action": "store_true",
            "help": "do not listen to socket-destroy events (connections that open and close between two "
            "scans are then not seen)",
        },
    ),
    (("--tls-cert",), {"help": "mutual TLS: this host's certificate (its common name is the host id)"}),
    (("--tls-key",), {"help": "mutual TLS: the certificate's private key"}),
    (
        ("--spool",),
        {"help": "folder where scans wait while the collector is away (kept across restarts; default: in memory only)"},
    ),
    (
        ("--spool-max-bytes",),
        {
            "type": int,
            "default": 64 * 1024 * 1024,
            "help": "bound of the spool; beyond it the oldest scans are dropped and the gap recorded (64 MiB)",
        },
    ),
    (
        ("--token-file",),
        {
            "help": "file holding this host's token from `sockfleet collector enroll`, readable by its "
            "owner only (default: $SOCKFLEET_TOKEN)"
        },
    ),
    (
        ("--log-level",),
        {
            "choices": ("debug", "info", "warning", "error"),
            "default": "info",
            "help": "connecting, leaving and why are logged at info (default)",
        },
    ),
    LOG_FORMAT,
    (
        ("--metrics-listen",),
        {"help": "HOST:PORT to serve Prometheus metrics (/metrics) and /healthz on (default: not served)"},
    ),
    DEBUG,
)


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
    add_options(parser, (DEBUG,))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_options(commands.add_parser("snapshot", help="print every socket of this host with its owner"), SNAPSHOT)
    run = commands.add_parser("run", help="scan every interval and stream to a collector")
    add_options(run, RUN)
    run.config = configurable(run, "agent")
    return parser


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

        json.dump(coverage.as_dict(), sys.stdout, indent=2)
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
            from sockfleet.agent.run import run_command  # gRPC and protobuf only for a running agent

            return run_command(args)
    except AgentError as exc:
        if args.debug:
            raise
        return fail("sockfleet", exc, exc.exit_status)
    parser.error(f"unknown command {args.command}")
    return 2


__all__ = ["__version__", "main"]
