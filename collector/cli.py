"""The collector side of ``sockfleet``: the parser of every command that is not the agent's, and the dispatch
to the module of each group (``collector.commands``).

A mistake on the command line, a time out of range, a database that cannot be reached or is not
sockfleet's: one line on standard error and exit status 2.  Any other known failure: one line and
exit status 1.  A traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from sockfleet.collector import db, output
from sockfleet.collector.errors import CollectorError
from sockfleet.commandline import Parser, fail

PROTOS = ("tcp", "udp", "unix")
TIME_OPTIONS = ("--at", "--since", "--until", "--from", "--to")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help=f"database URL (default: {db.default_url()}, or $SOCKFLEET_DB)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _states(text: str) -> tuple[str, ...]:
    """``"listen,established"`` → ("LISTEN", "ESTABLISHED"); the kernel's names, any case."""
    from sockfleet.collector.queries import STATES

    names = tuple(name.strip().upper().replace("-", "_") for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STATES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: states are {', '.join(STATES)}")
    return names


def _question_options(parser: argparse.ArgumentParser, filters: bool = True) -> None:
    _db_option(parser)
    parser.add_argument("--at", help="as of this time: RFC 3339 (2026-11-25T10:00:00Z) or relative (-15m, -2h)")
    parser.add_argument("--format", choices=output.FORMATS, default="table")
    if filters:
        parser.add_argument("--host", help="only this host (its name or its id)")
        parser.add_argument("--port", type=_port, help="only this local port")
        parser.add_argument("--proto", choices=PROTOS, help="only this protocol")
        parser.add_argument("--state", type=_states, help="only sockets in these states (LISTEN,ESTABLISHED,...)")
        parser.add_argument("--process", help="only sockets owned by a process of this name")
        parser.add_argument("--exposed", action="store_true", help="only inet sockets bound beyond loopback")


def _collector_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    collector = commands.add_parser("collector", help="run the collector, manage its database and agent tokens")
    actions = collector.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve_cmd = actions.add_parser("serve", help="receive agents' snapshots over gRPC and store them")
    serve_cmd.add_argument("--listen", default="[::]:50051", help="HOST:PORT to listen on (default [::]:50051)")
    serve_cmd.add_argument("--tls-cert", help="PEM certificate chain to serve with")
    serve_cmd.add_argument("--tls-key", help="PEM private key of the certificate")
    serve_cmd.add_argument(
        "--tls-client-ca",
        help="mutual TLS: agents must show a certificate this CA signed, whose common name is their host id",
    )
    serve_cmd.add_argument("--insecure", action="store_true", help="serve plain text, without TLS (local trials only)")
    serve_cmd.add_argument(
        "--allow-anonymous", action="store_true", help="accept agents without an enrolled token (local trials only)"
    )
    serve_cmd.add_argument(
        "--rate-limit",
        type=float,
        default=20.0,
        help="repeated scans per second one agent may send, burst twice that (default 20; 0: no "
        "limit); an agent replaying scans it took while away is never limited",
    )
    serve_cmd.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        help="largest message accepted, in MiB (default 64: about 500,000 sockets; larger snapshots come in parts)",
    )
    serve_cmd.add_argument(
        "--max-clock-skew", default="2m", help="refuse scans dated further ahead of this collector's clock (default 2m)"
    )
    serve_cmd.add_argument(
        "--hello-timeout", default="10s", help="close a stream that has not said hello within this time (default 10s)"
    )
    serve_cmd.add_argument(
        "--init", action="store_true", help="add sockfleet's tables to a database that already holds other tables"
    )
    serve_cmd.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="agents connecting, leaving and refused are logged at info (default)",
    )
    _db_option(serve_cmd)
    enroll = actions.add_parser("enroll", help="issue a host's agent token (printed once; only its hash is kept)")
    enroll.add_argument("--host", required=True, help="the host's id: its agent's --host, or its /etc/machine-id")
    enroll.add_argument("--name", help="the name the host reports under (default: the name in its first hello)")
    enroll.add_argument(
        "--rotate", action="store_true", help="issue a new token for an enrolled host; the earlier one stops working"
    )
    enroll.add_argument(
        "--init", action="store_true", help="add sockfleet's tables to a database that already holds other tables"
    )
    _db_option(enroll)
    revoke = actions.add_parser("revoke", help="revoke a host's agent token; its open streams end")
    revoke.add_argument("--host", required=True, help="the host (its id or its name)")
    _db_option(revoke)
    rename = actions.add_parser("rename", help="give a host another name")
    rename.add_argument("--host", required=True, help="the host (its id or its current name)")
    rename.add_argument("--name", required=True, help="its new name")
    _db_option(rename)
    tokens = actions.add_parser("tokens", help="the agent tokens issued: for which host, when, last used, revoked")
    tokens.add_argument("--format", choices=output.FORMATS, default="table")
    _db_option(tokens)
    migrate = actions.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument(
        "--init", action="store_true", help="add sockfleet's tables to a database that already holds other tables"
    )
    _db_option(migrate)


def build_parser() -> Parser:
    parser = Parser(prog="sockfleet", description="Questions to a sockfleet collector.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _collector_commands(commands)

    hosts = commands.add_parser("hosts", help="hosts, their addresses and whether they report")
    _question_options(hosts, filters=False)
    sockets = commands.add_parser("sockets", help="every socket on the fleet's hosts")
    _question_options(sockets)
    ports = commands.add_parser("ports", help="listening sockets: TCP LISTEN, unconnected UDP, Unix listeners")
    _question_options(ports)

    talks = commands.add_parser("talks", help="who talks to whom: edges between processes on hosts")
    _db_option(talks)
    talks.add_argument("--at", help="as of this time (default now)")
    talks.add_argument("--since", help="edges alive at any time from this time ...")
    talks.add_argument("--until", help="... to this time (default now)")
    talks.add_argument("--host", help="only edges with this host (name or id) at either end")
    talks.add_argument("--port", type=_port, help="only edges to this server port")
    talks.add_argument("--process", help="only edges with a process of this name at either end")
    talks.add_argument("--format", choices=(*output.FORMATS, "dot"), default="table")

    history = commands.add_parser("history", help="a host's socket timeline: when each opened and closed")
    _db_option(history)
    history.add_argument("--host", required=True, help="the host (its name or its id)")
    where = history.add_mutually_exclusive_group()
    where.add_argument("--port", type=_port, help="only sockets on this local port")
    where.add_argument("--path", help="only Unix sockets on this path")
    history.add_argument("--since", help="only sockets alive at or after this time")
    history.add_argument("--format", choices=output.FORMATS, default="table")

    diff = commands.add_parser("diff", help="listeners and edges opened and closed between two moments")
    _db_option(diff)
    diff.add_argument("--from", dest="start", required=True, help="the earlier moment")
    diff.add_argument("--to", dest="end", help="the later moment (default: now)")
    diff.add_argument("--host", help="only this host (name or id)")
    diff.add_argument("--format", choices=output.FORMATS, default="table")

    audit_cmd = commands.add_parser("audit", help="audit listeners: exposed, new, a policy's rules, hosts not seen")
    _db_option(audit_cmd)
    audit_cmd.add_argument("--policy", help="TOML policy file (see the README)")
    audit_cmd.add_argument("--at", help="as of this time (default now)")
    audit_cmd.add_argument("--new-within", default="24h", help="a listener first seen this recently is new (24h)")
    audit_cmd.add_argument(
        "--lookback", default="7d", help="a host observed this recently (or enrolled) must be observed now (7d)"
    )
    audit_cmd.add_argument(
        "--allow-unobserved", action="store_true", help="report hosts not observed as notices, without exit status 3"
    )
    audit_cmd.add_argument("--format", choices=("table", "json"), default="table")

    demo_cmd = commands.add_parser(
        "demo", help="a collector and an agent on this machine; shows the open ports and who talks to whom"
    )
    demo_cmd.add_argument("--db", help="database URL (default: demo.db beside the default database)")
    demo_cmd.add_argument("--interval", default="5s", help="the agent's scan interval (default 5s)")
    demo_cmd.add_argument("--once", action="store_true", help="stop after showing the ports once")
    return parser


def join_relative_times(argv: list[str]) -> list[str]:
    """``--at -15m`` → ``--at=-15m``: argparse would take ``-15m`` for an option."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in TIME_OPTIONS and arg.startswith("-") and arg[1:2].isdigit():
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The command's function; only its own group's module is loaded (gRPC, for instance, only to serve)."""
    if args.command == "collector":
        if args.action == "serve":
            from sockfleet.collector.commands import serve

            return serve.run
        from sockfleet.collector.commands import admin

        return admin.COMMANDS[args.action]
    if args.command == "demo":
        from sockfleet.collector.commands import demo

        return demo.run
    from sockfleet.collector.commands import questions

    return {
        "talks": questions.talks_command,
        "history": questions.history_command,
        "diff": questions.diff_command,
        "audit": questions.audit_command,
    }.get(args.command, questions.question)


def main(argv: list[str]) -> int:
    args = build_parser().parse(join_relative_times(argv))
    level = getattr(args, "log_level", None) or ("debug" if args.debug else "warning")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s: %(message)s")
    if not args.debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # each revision applied is not news
    try:
        return _handler(args)(args)
    except CollectorError as exc:
        if args.debug:
            raise
        return fail("sockfleet", exc, exc.exit_status)
    except DBAPIError as exc:
        if args.debug:
            raise
        return fail("sockfleet", CollectorError(f"database error: {db.reason(exc)}"), 1)
    except KeyboardInterrupt:
        return 130


__all__ = ["main"]
