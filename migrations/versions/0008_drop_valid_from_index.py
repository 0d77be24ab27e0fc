"""Drop the index on sockets.valid_from: the lifetime-class index answers questions by time, and every
stored socket paid for this one.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_sockets_valid_from", table_name="sockets")


def downgrade() -> None:
    op.create_index("ix_sockets_valid_from", "sockets", ["valid_from"])
