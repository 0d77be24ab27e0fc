"""The questions: ``hosts``, ``sockets``, ``ports``, ``talks``, ``history``, ``diff`` and ``audit``.

Each handler takes the parsed arguments, asks the database through ``collector.queries`` (and its
siblings), prints rows in the chosen format and returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from typing import IO, Any

from sqlalchemy import Connection, Engine

from sockfleet.collector import audit, changes, db, output, queries, retention
from sockfleet.collector.errors import UsageError
from sockfleet.collector.talks import EDGE_FIELDS, Edge, Window, edges
from sockfleet.collector.times import now, parse_duration, parse_time, rfc3339
from sockfleet.commandline import printable

SOCKET_TABLE = ("host", "proto", "state", "local", "remote", "user", "pid", "process")


def open_db(url: str | Engine | None, moments: dict[str, datetime | None]) -> Engine:
    """The database, opened to read only (a question never writes, nor makes a file); a question about a
    moment (``moments``: each option and its value) before the retention horizon is refused.  A server
    that asks many questions (``sockfleet web``) passes the engine it opened once."""
    if isinstance(url, Engine):
        engine = url
    else:
        engine = db.engine(url, write=False)
        db.require_current(engine)
    with engine.connect() as conn:
        retention.refuse_before(conn, moments)
    return engine


def _host(conn: Connection, host: str | None) -> str | None:
    """The name of the host ``--host`` names by its name or its id; naming no host is a usage error."""
    if host is None:
        return None
    name = queries.host_name(conn, host)
    if name is None:
        raise UsageError(f"--host {host}: no such host (see `sockfleet hosts`)")
    return name


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    moment = parse_time(text, option)
    if moment > now():
        raise UsageError(f"{option} {text}: that is in the future")
    return moment


def talks_command(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    at = _moment(args.at, "--at")
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    if at is not None and (since or until):
        raise UsageError("--at goes alone; --since and --until give a window")
    if until is not None and since is None:
        raise UsageError("--until needs --since")
    if since is not None and until is not None and until < since:
        raise UsageError("--until is earlier than --since")
    window = Window(since, until or now()) if since is not None else Window(at)
    engine = open_db(args.db, {"--at": at, "--since": since})
    with engine.connect() as conn:
        host = _host(conn, args.host)
        rows = edges(conn, window, host, args.port)
        seen = queries.observed(conn, window.end or window.start, window.since)
    if args.process is not None:
        rows = [e for e in rows if args.process in (e.client_process, e.server_process)]
    write_edges(rows, args.format, out)
    _warn_unknown(err, seen, window.end or window.start, host, window.since)
    return 0


def write_edges(found: list[Edge], fmt: str, out: IO[str]) -> None:
    """Edges on standard output: a Graphviz graph, or rows (the table names each end in one column)."""
    rows = [edge.row() for edge in found]
    if fmt == "dot":
        out.write(output.dot(rows))
        return
    for row in rows:
        row["client"] = _end(row["client_host"], row["client_address"], row["client_process"])
        row["server"] = _end(row["server_host"], row["server_address"], row["server_process"])
    output.write(
        rows,
        EDGE_FIELDS,
        out,
        fmt,
        ("proto", "client", "server", "server_port", "connections", "last_seen", "direction"),
    )


def _end(host: str | None, address: str | None, process: str | None) -> str:
    place = host or f"{address} (external)"
    return f"{place} {process}" if process else place


def history_command(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    since = _moment(args.since, "--since")
    engine = open_db(args.db, {"--since": since})
    with engine.connect() as conn:
        rows = changes.history(conn, _host(conn, args.host) or "", args.port, args.path, since)
    for row in rows:
        row["local"], row["remote"] = output.endpoint(row), remote(row)
    output.write(
        rows,
        changes.HISTORY_FIELDS,
        out,
        args.format,
        ("valid_from", "valid_to", "proto", "state", "local", "remote", "pid", "process"),
    )
    return 0


def diff_command(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    start, end = _moment(args.start, "--from"), _moment(args.end, "--to") or now()
    assert start is not None
    if end < start:
        raise UsageError("--to is earlier than --from")
    engine = open_db(args.db, {"--from": start})
    with engine.connect() as conn:
        rows, left_out = changes.diff(conn, start, end, _host(conn, args.host), args.short_lived)
    for row in rows:
        if row["kind"] == "listener":
            row["what"] = f"{row['host']} {output.endpoint(row)} {row.get('process') or ''}".rstrip()
        else:
            client = _end(row["client_host"], row["client_address"], row["client_process"])
            server = _end(row["server_host"], row["server_address"], row["server_process"])
            row["what"] = f"{client} -> {server} {output.service(row)}"
    output.write(rows, changes.DIFF_FIELDS, out, args.format, ("change", "kind", "what"))
    if left_out:
        print(f"left out (not observed at both moments): {printable(', '.join(left_out))}", file=err)
    return 0


def audit_command(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Exit status: 1 when a rule is broken, else 3 when a host that should be seen is not, else 0."""
    out, err = out or sys.stdout, err or sys.stderr
    at = _moment(args.at, "--at")
    rules = audit.load_policy(args.policy) if args.policy else []
    window = timedelta(seconds=parse_duration(args.new_within, "--new-within"))
    lookback = timedelta(seconds=parse_duration(args.lookback, "--lookback"))
    engine = open_db(args.db, {"--at": at})
    with engine.connect() as conn:
        findings, unknown = audit.audit(conn, at, rules, window, at or now(), lookback)
    if args.allow_unobserved:
        for finding in findings:
            if finding["severity"] == "unknown":
                finding["severity"] = "notice"
    violations = [f for f in findings if f["severity"] == "violation"]
    unobserved = [f for f in findings if f["severity"] == "unknown"]
    if args.format == "json":
        output.write(findings, audit.FINDING_FIELDS, out, "json")
    else:
        for finding in findings:
            finding["listener"] = (
                f"{finding['host']} {output.endpoint(finding)}" if finding["proto"] else finding["host"]
            )
        output.write(
            findings, audit.FINDING_FIELDS, out, "table", ("severity", "finding", "listener", "process", "detail")
        )
        notices = len(findings) - len(violations) - len(unobserved)
        print(f"{len(violations)} violation(s), {len(unobserved)} host(s) not observed, {notices} notice(s)", file=out)
    if unknown:
        print(f"not audited (not observed{' then' if at else ' lately'}): {printable(', '.join(unknown))}", file=err)
    if violations:
        return 1
    return 3 if unobserved else 0


def question(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    at = _moment(args.at, "--at")
    engine = open_db(args.db, {"--at": at})
    with engine.connect() as conn:
        if args.command == "hosts":
            rows = queries.host_rows(conn, at)
            for row in rows:
                row["notes"] = host_notes(row)
            output.write(
                rows,
                queries.HOST_FIELDS,
                out,
                args.format,
                ("host", "status", "addresses", "sockets", "last_seen", "agent_version", "notes"),
            )
            return 0
        host = _host(conn, args.host)
        seen = queries.observed(conn, at)
        filters = queries.Filters(host, args.port, args.proto, args.process, args.exposed, args.state)
        rows = queries.sockets_at(conn, at, filters, only_listening=args.command == "ports", hosts_known=seen)
    if args.format == "table":
        for row in rows:
            row["local"] = output.endpoint(row)
            row["remote"] = remote(row)
    output.write(rows, queries.SOCKET_FIELDS, out, args.format, SOCKET_TABLE)
    _warn_unknown(err, seen, at, host)
    return 0


CLOCK_NOTICE = 2.0  # seconds of clock difference worth a note


def host_notes(row: dict[str, Any]) -> str:
    """What an operator should know about a host beyond its status: scans dropped, its clock, refusals."""
    notes = []
    if row["gaps"]:
        notes.append(f"{row['gaps']} scan(s) dropped")
    if row["events_lost"]:
        notes.append(f"short-lived connections lost {row['events_lost']} time(s) (kernel event queue full)")
    skew = row["clock_skew"]
    if skew is not None and abs(skew) >= CLOCK_NOTICE:
        notes.append(f"clock {abs(skew):,.0f} s {'ahead' if skew > 0 else 'behind'}")
    if row["last_refusal"]:
        notes.append(f"last refused {rfc3339(row['last_refusal_at'])}: {row['last_refusal']}")
    return "; ".join(notes)


def remote(row: dict[str, Any]) -> str:
    if row["proto"] == "unix":
        return f"peer {row['peer_inode']}" if row.get("peer_inode") else ""
    address = row.get("remote_address")
    if address is None:
        return "*"
    return f"[{address}]:{row['remote_port']}" if ":" in address else f"{address}:{row['remote_port']}"


def _warn_unknown(
    err: IO[str], seen: queries.Observed, at: datetime | None, host: str | None, since: datetime | None = None
) -> None:
    names = sorted(printable(name) for name in seen.unknown.values() if host is None or name == host)
    if not names:
        return
    if since is not None:
        print(f"unknown from {rfc3339(since)} to {rfc3339(at)} (not observed then): {', '.join(names)}", file=err)
    elif at is None:
        print(f"stale (no report for 3 intervals; last known state shown): {', '.join(names)}", file=err)
    else:
        print(f"unknown at {rfc3339(at)} (not observed then): {', '.join(names)}", file=err)
