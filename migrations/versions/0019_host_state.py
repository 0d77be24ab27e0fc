"""What each applied message writes about its host moves from ``hosts`` to ``host_state``, one row per host.

Revision ID: 0019
Revises: 0018

``hosts`` keeps who a host is, written at its hello (name, host id, agent, boot, interval, clock skew, its last
refusal, what retention removed); ``host_state`` holds what every message of its stream changes: the last
applied (epoch, seq), that scan's time and completeness, first and last seen, and the lease of the collector
applying it.  The history tables are spread by ``host_ref`` when one PostgreSQL primary is not enough (README,
"Sizing"): ``hosts`` then stays a table every node holds a copy of, written once per stream, and
``host_state`` is spread with the host's history, so a message writes one node only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# The moved columns, as revisions 0001 and 0016 made them on hosts.
MOVED = (
    ("epoch", sa.BigInteger(), False, None),
    ("seq", sa.BigInteger(), False, None),
    ("last_taken_at", sa.DateTime(), True, None),
    ("complete", sa.Boolean(), False, None),
    ("first_seen", sa.DateTime(), False, None),
    ("last_seen", sa.DateTime(), False, None),
    ("lease", sa.BigInteger(), False, "0"),
    ("lease_holder", sa.String(255), True, None),
    ("lease_until", sa.DateTime(), True, None),
)
NAMES = ", ".join(name for name, *_ in MOVED)


def upgrade() -> None:
    op.create_table(
        "host_state",
        sa.Column("host_ref", sa.Integer(), nullable=False),
        *(sa.Column(name, kind, nullable=nullable, server_default=default) for name, kind, nullable, default in MOVED),
        sa.ForeignKeyConstraint(["host_ref"], ["hosts.id"], name="fk_host_state_host_ref_hosts", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("host_ref", name="pk_host_state"),
    )
    op.execute(f"INSERT INTO host_state (host_ref, {NAMES}) SELECT id, {NAMES} FROM hosts")
    for name, *_ in MOVED:
        op.drop_column("hosts", name)  # in place, also on SQLite (3.35 and later): the table is not rebuilt


def downgrade() -> None:
    """The columns back on ``hosts``; on SQLite they stay nullable (it adds a column NOT NULL only with a
    default)."""
    for name, kind, _, default in MOVED:
        op.add_column("hosts", sa.Column(name, kind, nullable=True, server_default=default))
    sets = ", ".join(f"{name} = (SELECT s.{name} FROM host_state s WHERE s.host_ref = hosts.id)" for name, *_ in MOVED)
    op.execute(f"UPDATE hosts SET {sets}")
    if op.get_bind().dialect.name == "postgresql":
        for name, kind, nullable, _ in MOVED:
            if not nullable:
                op.alter_column("hosts", name, existing_type=kind, nullable=False)
    op.drop_table("host_state")
