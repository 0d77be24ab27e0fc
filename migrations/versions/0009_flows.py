"""Flows: connected inet sockets folded per host when stored, so that "who talks to whom at T" reads a
few rows per host; and a partial index for the Unix sockets that ``talks`` pairs.

Existing history is folded here with ``collector.flows.Builder``, the rule the store applies to new
messages: every socket row once, in the order the rows opened.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from collector import flows

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 10_000


def upgrade() -> None:
    op.add_column("sockets", sa.Column("flow", sa.String(length=32), nullable=True))
    op.create_index("ix_sockets_unix", "sockets", ["span", "valid_from", "valid_to"],
                    sqlite_where=sa.text("proto = 'unix'"), postgresql_where=sa.text("proto = 'unix'"))
    table = op.create_table(
        "flows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("netns", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.String(length=8), nullable=False),
        sa.Column("role", sa.String(length=1), nullable=False),
        sa.Column("process", sa.String(length=255), nullable=True),
        sa.Column("local_address", sa.String(length=64), nullable=True),
        sa.Column("local_port", sa.Integer(), nullable=True),
        sa.Column("remote_address", sa.String(length=64), nullable=True),
        sa.Column("remote_port", sa.Integer(), nullable=True),
        sa.Column("connections", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_to", sa.DateTime(), nullable=True),
        sa.Column("span", sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(["host_ref"], ["hosts.id"], name="fk_flows_host_ref_hosts", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_flows"),
    )
    _fold_history(table)
    op.create_index("ix_flows_span_valid_from_valid_to", "flows", ["span", "valid_from", "valid_to"])
    op.create_index("ix_flows_host_ref_valid_from", "flows", ["host_ref", "valid_from"])
    op.create_index("uq_flows_open_key", "flows", ["host_ref", "key"], unique=True,
                    sqlite_where=sa.text("valid_to IS NULL"), postgresql_where=sa.text("valid_to IS NULL"))


def _fold_history(table: sa.Table) -> None:
    conn = op.get_bind()
    s = sa.table("sockets", sa.column("valid_from", sa.DateTime()), sa.column("valid_to", sa.DateTime()),
                 *(sa.column(name) for name in ("id", "host_ref", "netns", "proto", "state", "process",
                                                "local_address", "local_port", "remote_address", "remote_port",
                                                "flow")))
    c = s.c
    listening = sa.or_(c.state == "LISTEN", sa.and_(c.proto == "udp", c.state == "UNCONN"))
    rows = conn.execute(
        sa.select(c.id, c.host_ref, c.valid_from, c.valid_to, c.netns, c.proto, c.state, c.process,
                  c.local_address, c.local_port, c.remote_address, c.remote_port)
        .where(c.proto != "unix", sa.or_(c.remote_address.is_not(None), listening))
        .order_by(c.valid_from, sa.case((listening, 0), else_=1), c.id),
        execution_options={"stream_results": True, "yield_per": BATCH},
    )
    versions: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    setting = sa.update(s).where(c.id == sa.bindparam("socket")).values(flow=sa.bindparam("key"))
    builder = flows.Builder(versions.append)
    for row in rows:
        key = builder.add(row.host_ref, row.valid_from, row.valid_to, row.netns, row.proto, row.state,
                          row.process, row.local_address, row.local_port, row.remote_address, row.remote_port)
        if key is not None:
            keys.append({"socket": row.id, "key": key})
        if len(keys) >= BATCH or len(versions) >= BATCH:
            _write(conn, setting, keys, table, versions)
    builder.finish()
    _write(conn, setting, keys, table, versions)


def _write(conn: sa.Connection, setting: Any, keys: list[dict[str, Any]], table: sa.Table,
           versions: list[dict[str, Any]]) -> None:
    if keys:
        conn.execute(setting, keys)
    if versions:
        conn.execute(sa.insert(table), versions)
    keys.clear()
    versions.clear()


def downgrade() -> None:
    op.drop_table("flows")
    op.drop_index("ix_sockets_unix", table_name="sockets")
    op.drop_column("sockets", "flow")
