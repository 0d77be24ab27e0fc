"""Credentials keep the name their host was enrolled under, and when they were last used.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("credentials", sa.Column("host_name", sa.String(length=255), nullable=True))
    op.add_column("credentials", sa.Column("last_used_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE (SQLite 3.35 and later), as in 0011.
    op.drop_column("credentials", "last_used_at")
    op.drop_column("credentials", "host_name")
