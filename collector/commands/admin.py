"""``sockfleet collector migrate``, ``prune``, ``status``, ``enroll``, ``revoke``, ``rename`` and ``tokens``:
the database, its retention, and the agents' credentials."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import date
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from sockfleet.collector import credentials, db, output, partitions, queries, retention
from sockfleet.collector.errors import UsageError
from sockfleet.collector.store import leases
from sockfleet.collector.times import rfc3339
from sockfleet.commandline import printable


def migrate(args: argparse.Namespace) -> int:
    engine = db.engine(args.db, init=args.init)
    db.migrate(engine)
    print(f"database at revision {db.current(engine)}: {db.shown(engine.url)}", file=sys.stderr)
    return 0


def enroll(args: argparse.Namespace) -> int:
    engine = db.engine(args.db, init=args.init)
    db.migrate(engine)
    token = credentials.enroll(engine, args.host, args.name, args.rotate)
    print(token)
    named = f" named {args.name!r}" if args.name else ""
    replaced = "; its earlier token no longer works" if args.rotate else ""
    print(
        f"token for host {args.host!r}{named}: give it to its agent (--token-file, mode 0600); it is not shown "
        f"again{replaced}",
        file=sys.stderr,
    )
    return 0


def revoke(args: argparse.Namespace) -> int:
    engine = _existing(args.db)
    if not credentials.revoke(engine, args.host):
        raise UsageError(f"--host {args.host}: no active token")
    print(f"revoked the token of host {args.host!r}; its open streams end within a second", file=sys.stderr)
    return 0


def rename(args: argparse.Namespace) -> int:
    engine = _existing(args.db)
    host_id = credentials.rename(engine, args.host, args.name)
    print(f"host {host_id!r} is named {args.name!r} from now on", file=sys.stderr)
    return 0


def tokens(args: argparse.Namespace) -> int:
    rows = credentials.listing(_existing(args.db))
    output.write(
        rows, ("host_id", "host", "status", "enrolled_at", "last_used_at", "revoked_at"), sys.stdout, args.format
    )
    return 0


def _existing(url: str | None) -> Engine:
    engine = db.engine(url, create=False)
    db.require_current(engine)
    return engine


def prune(args: argparse.Namespace) -> int:
    age = retention.age(args.older_than, "--older-than")
    if age is None:
        raise UsageError("--older-than: give an age, like 30d or 12h")
    pruned = retention.maintain(_existing(args.db), age)
    assert pruned is not None
    print(
        f"history before {rfc3339(pruned.horizon)} removed: {pruned.rows} rows, {pruned.partitions} partitions; "
        "questions about earlier moments are refused",
        file=sys.stderr,
    )
    return 0


def status(args: argparse.Namespace) -> int:
    """The database, its schema's revision, retention, partitions and hosts: a table of lines, or one JSON object."""
    engine = db.engine(args.db, write=False)
    try:
        revision = db.current(engine)
    except DBAPIError as exc:
        raise UsageError(f"--db {db.shown(engine.url)}: {db.reason(exc)}") from exc
    report: dict[str, Any] = {"database": db.shown(engine.url), "revision": revision, "head": db.head()}
    if revision == db.head():
        with engine.connect() as conn:
            held = retention.state(conn)
            counted = Counter(row["status"] for row in queries.host_rows(conn, None))
            applying = leases.holders(conn)
        report |= {
            "horizon": rfc3339(held.horizon),
            "last_pruned_at": rfc3339(held.last_pruned_at),
            "rows_removed": held.rows_removed,
            "partitions_removed": held.partitions_removed,
            "partitions": [
                {"table": p.table, "days": p.days, "oldest": _day(p.oldest), "newest": _day(p.newest)}
                for p in partitions.layouts(engine)
            ]
            or None,
            "hosts": dict(sorted(counted.items())),
            "collectors": applying,
        }
    if args.format == "json":
        json.dump(report, sys.stdout)
        print()
    else:
        for name, value in _lines(report):
            print(f"{name:<11} {printable(value)}")
    return 0


def _day(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def _lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The status report as lines for people."""
    newest = "newest" if report["revision"] == report["head"] else f"newest is {report['head']}: `collector migrate`"
    lines = [("database", report["database"]), ("revision", f"{report['revision'] or 'none'} ({newest})")]
    if "hosts" not in report:
        return lines
    if report["horizon"] is None:
        lines.append(("retention", "keep everything"))
    else:
        lines.append(("retention", f"history before {report['horizon']} removed"))
        lines.append(
            (
                "last prune",
                f"{report['last_pruned_at'] or 'running'}: {report['rows_removed'] or 0} rows, "
                f"{report['partitions_removed'] or 0} partitions",
            )
        )
    for layout in report["partitions"] or ():
        lines.append(
            ("partitions", f"{layout['table']}: {layout['days']} days, {layout['oldest']} to {layout['newest']}")
        )
    hosts = ", ".join(f"{count} {name}" for name, count in report["hosts"].items())
    lines.append(("hosts", hosts or "none yet"))
    for holder, count in report["collectors"].items():
        lines.append(("collector", f"{holder} applies {count} host{'' if count == 1 else 's'}"))
    return lines


COMMANDS = {
    "prune": prune,
    "status": status,
    "migrate": migrate,
    "enroll": enroll,
    "revoke": revoke,
    "rename": rename,
    "tokens": tokens,
}
