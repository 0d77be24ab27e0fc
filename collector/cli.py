"""``sockfleet collector ...``, ``demo``, and the parser of every collector-side command (handlers of
the questions are in ``collector.questions``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import func, select

from collector import db, output, queries, questions, talks
from collector import store as store_module
from collector.errors import CollectorError, UsageError
from collector.schema import observations
from collector.server import credentials, start
from collector.store import Store
from collector.times import now, parse_duration

PROTOS = ("tcp", "udp", "unix")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help=f"database URL (default: {db.default_url()}, or $SOCKFLEET_DB)")


def _question_options(parser: argparse.ArgumentParser, filters: bool = True) -> None:
    _db_option(parser)
    parser.add_argument("--at", help="as of this time: RFC 3339 (2026-11-25T10:00:00Z) or relative (-15m, -2h)")
    parser.add_argument("--format", choices=output.FORMATS, default="table")
    if filters:
        parser.add_argument("--host", help="only this host (its name)")
        parser.add_argument("--port", type=_port, help="only this local port")
        parser.add_argument("--proto", choices=PROTOS, help="only this protocol")
        parser.add_argument("--process", help="only sockets owned by a process of this name")
        parser.add_argument("--exposed", action="store_true", help="only inet sockets bound beyond loopback")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockfleet", description="Questions to a sockfleet collector.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collector = commands.add_parser("collector", help="run or manage the collector")
    actions = collector.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="receive agents' snapshots over gRPC and store them")
    serve.add_argument("--listen", default="[::]:50051", help="HOST:PORT to listen on (default [::]:50051)")
    serve.add_argument("--tls-cert", help="PEM certificate chain to serve with")
    serve.add_argument("--tls-key", help="PEM private key of the certificate")
    serve.add_argument("--tls-client-ca", help="mutual TLS: agents must show a certificate this CA signed, "
                                               "whose common name is their host id")
    serve.add_argument("--insecure", action="store_true", help="serve plain text, without TLS (local trials only)")
    serve.add_argument("--allow-anonymous", action="store_true",
                       help="accept agents without an enrolled token (local trials only)")
    serve.add_argument("--rate-limit", type=float, default=20.0,
                       help="repeated scans per second one agent may send, burst twice that (default 20; 0: no "
                            "limit); an agent replaying scans it took while away is never limited")
    serve.add_argument("--max-message-mb", type=float, default=64.0,
                       help="largest message accepted, in MiB (default 64: about 500,000 sockets; larger snapshots "
                            "come in parts)")
    serve.add_argument("--max-clock-skew", default="2m",
                       help="refuse scans dated further ahead of this collector's clock (default 2m)")
    _db_option(serve)
    enroll = actions.add_parser("enroll", help="issue a host's agent token (printed once; only its hash is kept)")
    enroll.add_argument("--host", required=True, help="the host's id: its agent's --host, or its /etc/machine-id")
    _db_option(enroll)
    revoke = actions.add_parser("revoke", help="revoke a host's agent token")
    revoke.add_argument("--host", required=True, help="the host's id")
    _db_option(revoke)
    migrate = actions.add_parser("migrate", help="create or upgrade the database schema")
    _db_option(migrate)

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
    talks.add_argument("--host", help="only edges with this host at either end")
    talks.add_argument("--port", type=_port, help="only edges to this server port")
    talks.add_argument("--process", help="only edges with a process of this name at either end")
    talks.add_argument("--format", choices=(*output.FORMATS, "dot"), default="table")

    history = commands.add_parser("history", help="a host's socket timeline: when each opened and closed")
    _db_option(history)
    history.add_argument("--host", required=True, help="the host (its name)")
    where = history.add_mutually_exclusive_group()
    where.add_argument("--port", type=_port, help="only sockets on this local port")
    where.add_argument("--path", help="only Unix sockets on this path")
    history.add_argument("--since", help="only sockets alive at or after this time")
    history.add_argument("--format", choices=output.FORMATS, default="table")

    diff = commands.add_parser("diff", help="listeners and edges opened and closed between two moments")
    _db_option(diff)
    diff.add_argument("--from", dest="start", required=True, help="the earlier moment")
    diff.add_argument("--to", dest="end", help="the later moment (default: now)")
    diff.add_argument("--host", help="only this host")
    diff.add_argument("--format", choices=output.FORMATS, default="table")

    audit_cmd = commands.add_parser("audit", help="audit listeners: exposed, new, and a policy's rules")
    _db_option(audit_cmd)
    audit_cmd.add_argument("--policy", help="TOML policy file (see the README)")
    audit_cmd.add_argument("--at", help="as of this time (default now)")
    audit_cmd.add_argument("--new-within", default="24h", help="a listener first seen this recently is new (24h)")
    audit_cmd.add_argument("--lookback", default="7d",
                           help="a host observed this recently (or enrolled) must be observed now (7d)")
    audit_cmd.add_argument("--allow-unobserved", action="store_true",
                           help="report hosts not observed as notices, without exit status 3")
    audit_cmd.add_argument("--format", choices=("table", "json"), default="table")

    demo = commands.add_parser("demo", help="a collector and an agent on this machine; shows the open ports")
    _db_option(demo)
    demo.add_argument("--interval", default="5s", help="the agent's scan interval (default 5s)")
    demo.add_argument("--once", action="store_true", help="stop after showing the ports once")
    return parser


async def serve(args: argparse.Namespace) -> int:
    creds = credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    if creds is None and not args.insecure:
        raise UsageError("collector serve needs --tls-cert and --tls-key, or --insecure for plain text")
    if args.rate_limit < 0 or args.max_message_mb <= 0:
        raise UsageError("--rate-limit must be 0 or more, --max-message-mb more than 0")
    skew = timedelta(seconds=parse_duration(args.max_clock_skew, "--max-clock-skew"))
    engine = db.engine(args.db)
    db.migrate(engine)
    server, port, service = await start(Store(engine, skew), args.listen, creds, anonymous=args.allow_anonymous,
                                        rate_limit=args.rate_limit,
                                        max_message_bytes=int(args.max_message_mb * 1024 * 1024))
    mode = "TLS" if creds else "plain text (--insecure)"
    mode += ", anonymous agents allowed" if args.allow_anonymous else ", enrolled agents only"
    print(f"sockfleet collector: listening on {args.listen.rsplit(':', 1)[0]}:{port} ({mode}), "
          f"database {engine.url.render_as_string(hide_password=True)}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)  # streams get 5 s to finish the message they are applying
    print(f"sockfleet collector: stopped; {service.summary()}", file=sys.stderr, flush=True)
    return 0


async def demo(args: argparse.Namespace) -> int:
    """Collector on loopback (plain text, which is safe there), one agent of this machine, the open ports and
    who talks to whom."""
    interval = parse_duration(args.interval)
    engine = db.engine(args.db)
    db.migrate(engine)
    server, port, _ = await start(Store(engine), "127.0.0.1:0", None, anonymous=True)
    print(f"demo: collector on 127.0.0.1:{port} (plain text and no agent tokens: loopback only), "
          f"database {engine.url}", file=sys.stderr)
    agent = subprocess.Popen([
        sys.executable, "-m", "sockfleet.cli", "agent", "run", "--collector", f"127.0.0.1:{port}",
        "--insecure", "--interval", args.interval,
    ])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        started = now()
        while not stop.is_set():
            with engine.connect() as conn:
                seen = conn.execute(
                    select(func.count()).select_from(observations).where(observations.c.received_at >= started)
                ).scalar_one()
            if seen >= 2:  # the first snapshot, and the next scan: it holds the agent's own call to the collector
                break
            if agent.poll() is not None:
                raise CollectorError(f"the agent exited with status {agent.returncode}")
            await asyncio.sleep(0.2)
        if not stop.is_set():
            print(f"demo: first scans stored; open ports (sockfleet ports --db {engine.url}):", file=sys.stderr)
            with engine.connect() as conn:
                rows = queries.sockets_at(conn, None, queries.Filters(), only_listening=True)
            for row in rows:
                row["local"], row["remote"] = output.endpoint(row), questions.remote(row)
            output.write(rows, queries.SOCKET_FIELDS, sys.stdout, "table", questions.SOCKET_TABLE)
            sys.stdout.flush()
            print(f"demo: who talks to whom (sockfleet talks --db {engine.url}):", file=sys.stderr)
            with engine.connect() as conn:
                questions.write_edges(talks.edges(conn, talks.Window(None)), "table")
            sys.stdout.flush()
            if not args.once:
                print(f"demo: the agent scans every {interval:g}s; ask with `sockfleet ports --db {engine.url}` "
                      "in another terminal; Ctrl-C stops", file=sys.stderr, flush=True)
                await stop.wait()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
        await server.stop(grace=2)
    return 0


TIME_OPTIONS = ("--at", "--since", "--until", "--from", "--to")


def _join_relative_times(argv: list[str]) -> list[str]:
    """``--at -15m`` → ``--at=-15m``: argparse would take ``-15m`` for an option."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in TIME_OPTIONS and arg.startswith("-") and arg[1:2].isdigit():
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def collector_command(args: argparse.Namespace) -> int:
    if args.action in ("enroll", "revoke"):
        engine = db.engine(args.db)
        db.migrate(engine)
        if args.action == "enroll":
            token = store_module.enroll(engine, args.host)
            print(token)
            print(f"token for host {args.host!r}: give it to its agent (--token-file); it is not shown again",
                  file=sys.stderr)
            return 0
        if not store_module.revoke(engine, args.host):
            raise UsageError(f"--host {args.host}: no active token")
        print(f"revoked the token of host {args.host!r}", file=sys.stderr)
        return 0
    if args.action == "migrate":
        engine = db.engine(args.db)
        db.migrate(engine)
        print(f"database at revision {db.current(engine)}: {engine.url}", file=sys.stderr)
        return 0
    return asyncio.run(serve(args))


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_relative_times(argv))
    logging.basicConfig(level=logging.INFO if os.environ.get("SOCKFLEET_VERBOSE") else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    commands = {"talks": questions.talks_command, "history": questions.history_command,
                "diff": questions.diff_command, "audit": questions.audit_command,
                "demo": lambda a: asyncio.run(demo(a)), "collector": collector_command}
    try:
        return commands.get(args.command, questions.question)(args)
    except CollectorError as exc:
        if args.debug:
            raise
        print(f"sockfleet: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


__all__ = ["main"]
