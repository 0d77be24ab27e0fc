"""``sockfleet collector migrate``, ``enroll``, ``revoke``, ``rename`` and ``tokens``: the database and the
agents' credentials."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import Engine

from sockfleet.collector import credentials, db, output
from sockfleet.collector.errors import UsageError


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


def _not_yet(args: argparse.Namespace) -> int:
    raise UsageError(f"collector {args.action}: not available yet")


COMMANDS = {
    "prune": _not_yet,
    "status": _not_yet,
    "migrate": migrate,
    "enroll": enroll,
    "revoke": revoke,
    "rename": rename,
    "tokens": tokens,
}
