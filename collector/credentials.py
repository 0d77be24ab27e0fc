"""Agent tokens: issued to one host (its id and name), kept as hashes, used, rotated, revoked.

A token is 256 random bits; only its SHA-256 is stored (a plain hash is enough for a random secret that
long).  Enrolling binds the token to a host id and, when given, a name: a stream that presents it may
report only for that host id, under that name, and no host may take a name another host id holds.
Renaming a host is ``sockfleet collector rename``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from sockfleet.collector import convert
from sockfleet.collector.errors import UsageError
from sockfleet.collector.schema import credentials, hosts
from sockfleet.v1.limits import MAX_NAME


@dataclass(frozen=True, slots=True)
class Credential:
    """What an active token stands for: the host id it may report for, and the name it was enrolled with."""

    host_id: str
    name: str | None
    token_hash: str | None  # None for a client certificate


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def verify(conn: Connection, digest: str) -> Credential | None:
    """The credential of an active token (by its hash), or None; its use is recorded."""
    row = conn.execute(
        select(credentials.c.host_id, credentials.c.host_name).where(
            credentials.c.token_hash == digest, credentials.c.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    conn.execute(update(credentials).where(credentials.c.token_hash == digest).values(last_used_at=convert.now()))
    return Credential(row.host_id, row.host_name, digest)


def revoked_since(conn: Connection, moment: datetime) -> set[str]:
    """Hashes of the tokens revoked at or after ``moment``."""
    return set(conn.execute(select(credentials.c.token_hash).where(credentials.c.revoked_at >= moment)).scalars())


def enroll(engine: Engine, host_id: str, name: str | None = None, rotate: bool = False) -> str:
    """A new token for ``host_id``; an enrolled host needs ``rotate``, and its earlier token stops working."""
    if not host_id or len(host_id) > MAX_NAME:
        raise UsageError(f"--host: a host id has 1 to {MAX_NAME} characters")
    if name is not None and not 0 < len(name) <= MAX_NAME:
        raise UsageError(f"--name: a host name has 1 to {MAX_NAME} characters")
    token = secrets.token_urlsafe(32)
    moment = convert.now()
    with engine.begin() as conn:
        active = conn.execute(
            select(credentials.c.id).where(credentials.c.host_id == host_id, credentials.c.revoked_at.is_(None))
        ).first()
        if active is not None and not rotate:
            raise UsageError(
                f"--host {host_id} is enrolled already; --rotate issues a new token and the old one stops working"
            )
        if name is not None:
            _free(conn, host_id, name)
        conn.execute(
            update(credentials)
            .where(credentials.c.host_id == host_id, credentials.c.revoked_at.is_(None))
            .values(revoked_at=moment)
        )
        conn.execute(
            insert(credentials).values(host_id=host_id, host_name=name, token_hash=token_hash(token), created_at=moment)
        )
        if name is not None:
            conn.execute(update(hosts).where(hosts.c.host_id == host_id).values(name=name))
    return token


def revoke(engine: Engine, host: str) -> int:
    """Revoke every active token of a host (by id, or by the name it was enrolled or seen with)."""
    with engine.begin() as conn:
        host_id = resolve(conn, host)
        return conn.execute(
            update(credentials)
            .where(credentials.c.host_id == host_id, credentials.c.revoked_at.is_(None))
            .values(revoked_at=convert.now())
        ).rowcount


def rename(engine: Engine, host: str, name: str) -> str:
    """Give a host a new name (its history keeps it too); returns the host id."""
    if not 0 < len(name) <= MAX_NAME:
        raise UsageError(f"--name: a host name has 1 to {MAX_NAME} characters")
    with engine.begin() as conn:
        host_id = resolve(conn, host)
        _free(conn, host_id, name)
        found = conn.execute(update(hosts).where(hosts.c.host_id == host_id).values(name=name)).rowcount
        enrolled = conn.execute(
            update(credentials)
            .where(credentials.c.host_id == host_id, credentials.c.revoked_at.is_(None))
            .values(host_name=name)
        ).rowcount
        if not found and not enrolled:
            raise UsageError(f"--host {host}: no such host")
    return host_id


def listing(engine: Engine) -> list[dict[str, Any]]:
    """Every token issued: host id and name, when issued, last used and revoked."""
    query = (
        select(
            credentials.c.host_id,
            func.coalesce(credentials.c.host_name, hosts.c.name).label("host"),
            credentials.c.created_at,
            credentials.c.last_used_at,
            credentials.c.revoked_at,
        )
        .select_from(credentials.outerjoin(hosts, hosts.c.host_id == credentials.c.host_id))
        .order_by(credentials.c.host_id, credentials.c.created_at)
    )
    with engine.connect() as conn:
        return [
            {
                "host_id": r.host_id,
                "host": r.host,
                "enrolled_at": r.created_at,
                "last_used_at": r.last_used_at,
                "revoked_at": r.revoked_at,
                "status": "revoked" if r.revoked_at else "active",
            }
            for r in conn.execute(query)
        ]


def resolve(conn: Connection, host: str) -> str:
    """The host id of a host named by its id or its name."""
    row = conn.execute(
        select(hosts.c.host_id)
        .where(or_(hosts.c.host_id == host, hosts.c.name == host))
        .order_by((hosts.c.host_id == host).desc())
    ).first()
    if row is not None:
        return str(row.host_id)
    row = conn.execute(
        select(credentials.c.host_id).where(or_(credentials.c.host_id == host, credentials.c.host_name == host))
    ).first()
    if row is not None:
        return str(row.host_id)
    raise UsageError(f"--host {host}: no such host (see `sockfleet hosts` and `sockfleet collector tokens`)")


def _free(conn: Connection, host_id: str, name: str) -> None:
    """A name may belong to one host id only."""
    holder = conn.execute(select(hosts.c.host_id).where(hosts.c.name == name, hosts.c.host_id != host_id)).first()
    if holder is None:
        holder = conn.execute(
            select(credentials.c.host_id).where(
                credentials.c.host_name == name, credentials.c.host_id != host_id, credentials.c.revoked_at.is_(None)
            )
        ).first()
    if holder is not None:
        raise UsageError(f"--name {name} is the name of another host (id {holder.host_id})")
