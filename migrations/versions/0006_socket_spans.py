"""Lifetime classes of socket rows, so that "alive at T" reads a few index ranges over any length of history.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As collector/spans.py: class k holds lives of at most 4**k minutes (k = 0..10); class 11 longer ones.
LIMIT_SECONDS = [60 * 4**k for k in range(11)]


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy): the views over sockets stay as they are.
    op.add_column("sockets", sa.Column("span", sa.SmallInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        life = "EXTRACT(EPOCH FROM (valid_to - valid_from))"
    else:
        life = "(julianday(valid_to) - julianday(valid_from)) * 86400.0"
    classes = " ".join(f"WHEN {life} <= {limit} THEN {index}" for index, limit in enumerate(LIMIT_SECONDS))
    # Constant text: the class limits above, no values from outside.
    op.execute(f"UPDATE sockets SET span = CASE {classes} ELSE {len(LIMIT_SECONDS)} END WHERE valid_to IS NOT NULL")
    op.create_index("ix_sockets_span_valid_from_valid_to", "sockets", ["span", "valid_from", "valid_to"])


def downgrade() -> None:
    op.drop_index("ix_sockets_span_valid_from_valid_to", table_name="sockets")
    op.drop_column("sockets", "span")  # SQLite 3.35+ drops a column in place
