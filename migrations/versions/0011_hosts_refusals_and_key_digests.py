"""Hosts keep their clock's skew and their last refused message; socket keys are digests of the
key's known fields.

Before this revision a socket's ``key`` was the digest of its serialized wire key, which also covers
fields a newer agent may add: one socket could then be stored as two open rows.  The digest is now
made from the identity fields alone (``collector.convert.key_digest``, frozen below as it was when this
revision was written), and every stored row's key is made again from its identity columns.  On
PostgreSQL the key compares as plain text (collation "C"), whatever the database's locale, so that a
range of keys is the same range everywhere.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BATCH = 10_000
PROTOS = {"tcp": 1, "udp": 2, "unix": 3}
FAMILIES = {"inet": 1, "inet6": 2, "unix": 3}
TYPES = {"stream": 1, "dgram": 2, "seqpacket": 3}
IDENTITY = (
    "netns",
    "proto",
    "family",
    "type",
    "inode",
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "path",
)


def _wire(row: Any) -> tuple[Any, ...]:
    """A stored row's identity as the wire's key fields (numbers for enums, 0 and "" for none)."""
    return (
        row.netns,
        PROTOS[row.proto],
        FAMILIES[row.family],
        TYPES[row.type],
        row.inode or 0,
        row.local_address or "",
        row.local_port or 0,
        row.remote_address or "",
        row.remote_port or 0,
        row.path or "",
    )


def known_fields_digest(row: Any) -> str:
    return hashlib.blake2b("\x1f".join(map(str, _wire(row))).encode(), digest_size=16).hexdigest()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def serialized_key_digest(row: Any) -> str:
    """The digest before this revision: of the key serialized as protobuf does (fields in order, defaults
    left out)."""
    out = bytearray()
    for number, value in enumerate(_wire(row), start=1):
        if isinstance(value, str):
            if value:
                data = value.encode()
                out += _varint(number << 3 | 2) + _varint(len(data)) + data
        elif value:
            out += _varint(number << 3) + _varint(value)
    return hashlib.blake2b(bytes(out), digest_size=16).hexdigest()


def _rekey(digest: Callable[[Any], str]) -> None:
    conn = op.get_bind()
    sockets = sa.table("sockets", sa.column("id"), sa.column("key"), *(sa.column(name) for name in IDENTITY))
    last = 0
    while True:
        rows = conn.execute(
            sa.select(sockets.c.id, *(sockets.c[name] for name in IDENTITY))
            .where(sockets.c.id > last)
            .order_by(sockets.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        conn.execute(
            sa.update(sockets).where(sockets.c.id == sa.bindparam("row_id")).values(key=sa.bindparam("new_key")),
            [{"row_id": row.id, "new_key": digest(row)} for row in rows],
        )
        last = rows[-1].id


def upgrade() -> None:
    op.add_column("hosts", sa.Column("clock_skew", sa.Float(), nullable=True))
    op.add_column("hosts", sa.Column("last_refusal_at", sa.DateTime(), nullable=True))
    op.add_column("hosts", sa.Column("last_refusal", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("sockets", "key", type_=sa.String(32, collation="C"), existing_nullable=False)
    _rekey(known_fields_digest)


def downgrade() -> None:
    _rekey(serialized_key_digest)
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("sockets", "key", type_=sa.String(32), existing_nullable=False)
    # Plain ALTER TABLE (SQLite 3.35 and later): a batch would copy the table, which the views name.
    for column in ("last_refusal", "last_refusal_at", "clock_skew"):
        op.drop_column("hosts", column)
