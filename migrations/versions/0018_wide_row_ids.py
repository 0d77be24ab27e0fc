"""History row ids of 64 bits, and every history table's primary key holding its host.

Revision ID: 0018
Revises: 0017

Ids are drawn from one sequence per table and never reused, also after retention removed their rows.  A
32-bit id runs out: at 1,000 hosts with 2% of their connections changing every 30 s ``flows`` draws about 400
ids a second, 2^31 of them in two months.  On PostgreSQL ``sockets``, ``flows``, ``observations`` and
``closed_flows`` get ``bigint`` ids and sequences (each table and its indexes are rewritten once: the upgrade
takes a while on a large database, with the collectors stopped).  SQLite's integer primary keys are 64 bits
already.

The primary keys of ``observations`` and ``closed_flows`` (PostgreSQL) also take ``host_ref``, after the id and
the partition key they hold, so that a distributed PostgreSQL engine can spread these tables by host as they
stand: it wants the distribution column in every primary and unique key.  Lookups by id read the same index.
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

HISTORY = ("sockets", "flows", "observations", "closed_flows")
# Primary keys on PostgreSQL before and after: (id, partition key) then the host.
KEYS = {"observations": "id, taken_at", "closed_flows": "id, last_at"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in HISTORY:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id TYPE bigint")
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")
    for table, columns in KEYS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({columns}, host_ref)")


def downgrade() -> None:
    """Back to 32-bit ids: refused by PostgreSQL once an id has passed 2^31 - 1."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in KEYS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({columns})")
    for table in HISTORY:
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS integer")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id TYPE integer")
