"""Listeners open at T by lifetime class: a partial index over listener rows alone, so that "which
listeners were open at T" reads about those, however many listeners came and went before; and a
host's open listeners, which the store reads to file new connections under flows.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_sockets_listening_span",
        "sockets",
        ["span", "valid_from", "valid_to"],
        sqlite_where=sa.text("state IN ('LISTEN', 'UNCONN')"),
        postgresql_where=sa.text("state IN ('LISTEN', 'UNCONN')"),
    )
    op.create_index(
        "ix_sockets_open_listeners",
        "sockets",
        ["host_ref"],
        sqlite_where=sa.text("valid_to IS NULL AND state IN ('LISTEN', 'UNCONN')"),
        postgresql_where=sa.text("valid_to IS NULL AND state IN ('LISTEN', 'UNCONN')"),
    )


def downgrade() -> None:
    op.drop_index("ix_sockets_open_listeners", table_name="sockets")
    op.drop_index("ix_sockets_listening_span", table_name="sockets")
