"""Retention: the horizon before which history was removed, and (PostgreSQL) history tables partitioned by time.

Revision ID: 0014
Revises: 0013

Every database gets the ``retention`` row (the horizon, the last prune and what it removed); on each host,
what the observations removed by retention still tell (its last one, its dropped scans and the times its
kernel lost socket-destroy events); and ``pruned_listeners``, when each listener whose rows were removed
first listened.  Answers about moments at or after the horizon stay the same.

On PostgreSQL the four history tables become partitioned tables, so that retention drops a day whole:

* ``sockets`` and ``flows`` by ``valid_to``: open rows (null ``valid_to``) in the default partition
  ``<table>_open`` (its CHECK lets a new partition be added without reading it), closed rows in the
  partition of the day they ended, ``<table>_pYYYYMMDD``;
* ``observations`` by ``taken_at``, ``closed_flows`` by ``last_at``, in day partitions;
* each has ``<table>_before`` for every time earlier than its first day: rows an agent replays late always
  have a partition, and history older than a month at the time of this revision goes there whole.

A partitioned table's primary and unique keys must hold its partition key: ``observations`` and
``closed_flows`` add it to theirs; ``sockets`` and ``flows``, whose key may be null, keep a plain index on
``id`` (their ids still come from one sequence each).  The partial indexes of open rows live on the open
partition alone.  The SQL here is frozen: it is this revision's, not the live code's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

DAYS_AHEAD = 7  # day partitions made beyond today (the collector keeps making them)
DAYS_BACK = 31  # at most this many day partitions for history that already exists; older goes to _before

# Each partitioned table: its partition key, whether it has open rows (a default partition), its primary key.
PARTITIONED = {
    "sockets": ("valid_to", True, None),
    "flows": ("valid_to", True, None),
    "observations": ("taken_at", False, "id, taken_at"),
    "closed_flows": ("last_at", False, "id, last_at"),
}
LISTENING = "state IN ('LISTEN', 'UNCONN')"
# The indexes as revision 0013 left them on PostgreSQL: on the parent (made on every partition), or on the
# open partition alone.
INDEXES_0013 = {
    "sockets": (
        "ix_sockets_host_ref_valid_from ON {t} (host_ref, valid_from)",
        f"ix_sockets_listening ON {{t}} (host_ref, valid_from) WHERE {LISTENING}",
        f"ix_sockets_listening_span ON {{t}} (span, valid_from, valid_to) WHERE {LISTENING}",
        "ix_sockets_local_port ON {t} (local_port)",
        "ix_sockets_span_valid_from_valid_to ON {t} (span, valid_from, valid_to)",
        "ix_sockets_unix ON {t} (span, valid_from, valid_to) WHERE proto = 'unix'",
        "ix_sockets_valid_to ON {t} (valid_to)",
    ),
    "flows": (
        "ix_flows_host_ref_valid_from ON {t} (host_ref, valid_from)",
        "ix_flows_span_valid_from_valid_to ON {t} (span, valid_from, valid_to)",
    ),
    "observations": ("ix_observations_host_ref_taken_at ON {t} (host_ref, taken_at)",),
    "closed_flows": (
        "ix_closed_flows_host_ref_last_at ON {t} (host_ref, last_at)",
        "ix_closed_flows_last_at ON {t} (last_at)",
    ),
}
OPEN_INDEXES_0013 = {
    "sockets": (
        "UNIQUE INDEX uq_sockets_open_key ON {t} (host_ref, key) WHERE valid_to IS NULL",
        f"INDEX ix_sockets_open_listeners ON {{t}} (host_ref) WHERE valid_to IS NULL AND {LISTENING}",
    ),
    "flows": ("UNIQUE INDEX uq_flows_open_key ON {t} (host_ref, key) WHERE valid_to IS NULL",),
}
UNIQUE_0013 = {"observations": ("uq_observations_host_ref_epoch_seq", "host_ref, epoch, seq")}

# The views that read these tables, as revisions 0001 and 0013 made them (dropped and made again).
VIEWS_0001 = import_module("sockfleet.migrations.versions.0001_initial_schema").VIEWS
EDGES_0013 = import_module("sockfleet.migrations.versions.0013_closed_flows").EDGES


def upgrade() -> None:
    op.create_table(
        "retention",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("horizon", sa.DateTime(), nullable=True),
        sa.Column("last_pruned_at", sa.DateTime(), nullable=True),
        sa.Column("rows_removed", sa.BigInteger(), nullable=True),
        sa.Column("partitions_removed", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_retention"),
    )
    op.execute("INSERT INTO retention (id) VALUES (1)")
    op.create_table(
        "pruned_listeners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("proto", sa.String(length=8), nullable=False),
        sa.Column("local_port", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_ref"], ["hosts.id"], name="fk_pruned_listeners_host_ref_hosts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pruned_listeners"),
    )
    op.create_index("ix_pruned_listeners_host_ref", "pruned_listeners", ["host_ref"])
    op.add_column("hosts", sa.Column("pruned_gaps", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("hosts", sa.Column("pruned_events_lost", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("hosts", sa.Column("last_pruned_observation", sa.DateTime(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        _drop_views()
        first = _first_day()
        for table in PARTITIONED:
            _partition(table, first)
        _make_views()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _drop_views()
        for table in PARTITIONED:
            _unpartition(table)
        _make_views()
    op.drop_column("hosts", "last_pruned_observation")
    op.drop_column("hosts", "pruned_events_lost")
    op.drop_column("hosts", "pruned_gaps")
    op.drop_index("ix_pruned_listeners_host_ref", table_name="pruned_listeners")
    op.drop_table("pruned_listeners")
    op.drop_table("retention")


def _drop_views() -> None:
    op.execute("DROP VIEW edges")
    for name, _ in reversed(VIEWS_0001):
        op.execute(f"DROP VIEW {name}")


def _make_views() -> None:
    for name, query in VIEWS_0001:
        op.execute(f"CREATE VIEW {name} AS {query}")
    op.execute(f"CREATE VIEW edges AS {EDGES_0013}")


def _first_day() -> date:
    """The first day partition: the day the oldest stored history ended, but at most a month back."""
    today = datetime.now(UTC).date()
    oldest = [
        op.get_bind().execute(sa.text(f"SELECT min({key}) FROM {table}")).scalar()
        for table, (key, _, _) in PARTITIONED.items()
    ]
    found = [moment.date() for moment in oldest if moment is not None]
    return max(min([*found, today]), today - timedelta(days=DAYS_BACK))


def _partition(table: str, first: date) -> None:
    key, has_open, primary = PARTITIONED[table]
    old = f"{table}_unpartitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE ({key})")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    if has_open:
        op.execute(
            f"CREATE TABLE {table}_open PARTITION OF {table} "
            f"(CONSTRAINT ck_{table}_open_{key} CHECK ({key} IS NULL)) DEFAULT"
        )
    op.execute(f"CREATE TABLE {table}_before PARTITION OF {table} FOR VALUES FROM (MINVALUE) TO ('{first}')")
    day, last = first, datetime.now(UTC).date() + timedelta(days=DAYS_AHEAD)
    while day <= last:
        following = day + timedelta(days=1)
        op.execute(
            f"CREATE TABLE {table}_p{day:%Y%m%d} PARTITION OF {table} FOR VALUES FROM ('{day}') TO ('{following}')"
        )
        day = following
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    op.execute(f"DROP TABLE {old}")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_host_ref_hosts "
        "FOREIGN KEY (host_ref) REFERENCES hosts (id) ON DELETE CASCADE"
    )
    if primary is None:
        op.execute(f"CREATE INDEX ix_{table}_id ON {table} (id)")
    else:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({primary})")
    if table in UNIQUE_0013:
        name, columns = UNIQUE_0013[table]
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE ({columns}, {key})")
    for index in INDEXES_0013[table]:
        op.execute("CREATE INDEX " + index.format(t=table))
    for index in OPEN_INDEXES_0013.get(table, ()):
        op.execute("CREATE " + index.format(t=f"{table}_open"))


def _unpartition(table: str) -> None:
    """Back to one plain table with revision 0013's keys and indexes."""
    old = f"{table}_partitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS)")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_host_ref_hosts "
        "FOREIGN KEY (host_ref) REFERENCES hosts (id) ON DELETE CASCADE"
    )
    if table in UNIQUE_0013:
        name, columns = UNIQUE_0013[table]
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE ({columns})")
    for index in (*INDEXES_0013[table], *OPEN_INDEXES_0013.get(table, ())):
        op.execute(("CREATE " if index.startswith(("UNIQUE", "INDEX")) else "CREATE INDEX ") + index.format(t=table))
