"""Which collector applies each host's messages: several collectors may share one PostgreSQL database, and a
host's stream is applied by one of them at a time.

``lease`` counts the streams that took the host (each hello takes it anew; a message applied under an older
number is refused), ``lease_holder`` names the collector process holding it, ``lease_until`` is when the
holder's claim lapses if it applies nothing more (its process died, or its agent went quiet).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("lease", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("hosts", sa.Column("lease_holder", sa.String(255), nullable=True))
    op.add_column("hosts", sa.Column("lease_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("hosts", "lease_until")
    op.drop_column("hosts", "lease_holder")
    op.drop_column("hosts", "lease")
