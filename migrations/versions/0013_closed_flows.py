"""Connections that closed between two scans (socket-destroy events), and what the agents could not count.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


# The edges view (0007) with the columns a window's edges have: "now" counts open connections only, so no
# short-lived ones and no bytes (those come from connections that closed; see `sockfleet talks --since`).
EDGES_0007 = import_module("sockfleet.migrations.versions.0007_edges_view_joins").EDGES
EDGES = f"""
SELECT proto, client_host, client_address, client_process, server_host, server_address, server_port,
       server_process, connections, 0 AS short_lived, CAST(NULL AS BIGINT) AS client_bytes,
       CAST(NULL AS BIGINT) AS server_bytes, first_seen, direction
FROM ({EDGES_0007}) AS folded
"""


def upgrade() -> None:
    op.create_table(
        "closed_flows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.Column("netns", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.String(length=8), nullable=False),
        sa.Column("role", sa.String(length=1), nullable=False),
        sa.Column("process", sa.String(length=255), nullable=True),
        sa.Column("local_address", sa.String(length=64), nullable=False),
        sa.Column("local_port", sa.Integer(), nullable=True),
        sa.Column("remote_address", sa.String(length=64), nullable=False),
        sa.Column("remote_port", sa.Integer(), nullable=True),
        sa.Column("connections", sa.Integer(), nullable=False),
        sa.Column("short_lived", sa.Integer(), nullable=False),
        sa.Column("sent_bytes", sa.BigInteger(), nullable=True),
        sa.Column("received_bytes", sa.BigInteger(), nullable=True),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["host_ref"], ["hosts.id"], name="fk_closed_flows_host_ref_hosts", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_closed_flows"),
    )
    op.create_index("ix_closed_flows_last_at", "closed_flows", ["last_at"])
    op.create_index("ix_closed_flows_host_ref_last_at", "closed_flows", ["host_ref", "last_at"])
    op.add_column("observations", sa.Column("events_lost", sa.Integer(), nullable=False, server_default="0"))
    op.execute("DROP VIEW edges")
    op.execute(f"CREATE VIEW edges AS {EDGES}")


def downgrade() -> None:
    op.execute("DROP VIEW edges")
    op.execute(f"CREATE VIEW edges AS {EDGES_0007}")
    # Plain ALTER TABLE (SQLite 3.35 and later), as in 0011.
    op.drop_column("observations", "events_lost")
    op.drop_index("ix_closed_flows_host_ref_last_at", table_name="closed_flows")
    op.drop_index("ix_closed_flows_last_at", table_name="closed_flows")
    op.drop_table("closed_flows")
