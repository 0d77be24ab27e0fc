"""Indexes for questions over a long history: listeners at T (partial), and one host's timeline.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sockets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sockets_listening",
            ["host_ref", "valid_from"],
            unique=False,
            sqlite_where=sa.text("state IN ('LISTEN', 'UNCONN')"),
            postgresql_where=sa.text("state IN ('LISTEN', 'UNCONN')"),
        )
        batch_op.create_index("ix_sockets_host_ref_valid_from", ["host_ref", "valid_from"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sockets", schema=None) as batch_op:
        batch_op.drop_index("ix_sockets_host_ref_valid_from")
        batch_op.drop_index("ix_sockets_listening")
