"""A host's sockets by lifetime class: "which of this host's sockets were open at T" reads one short range per
class (collector/spans.py), so that `history --host H --since T` reads the rows open at T and those that
began after it, however long the host's history before T.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_sockets_host_ref_span_valid_from_valid_to", "sockets", ["host_ref", "span", "valid_from", "valid_to"]
    )


def downgrade() -> None:
    op.drop_index("ix_sockets_host_ref_span_valid_from_valid_to", table_name="sockets")
