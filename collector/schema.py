"""The collector's tables, in SQLAlchemy Core; the database itself is made only by the Alembic revisions.

History is kept as intervals: a socket is one row from ``valid_from`` to
``valid_to`` (null while it lives).  A change of state or owner closes the row
and opens a new one; queue lengths are stored as first read and never make
rows.  Host addresses are kept the same way.  Every applied message leaves one
``observations`` row, so a query knows when each host was seen.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    literal_column,
    or_,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

KEY = String(32).with_variant(String(32, collation="C"), "postgresql")
# History row ids: 64 bits, never reused (SQLite's integer primary key is 64 bits already; migration 0018).
ROW_ID = BigInteger().with_variant(Integer, "sqlite")

hosts = Table(
    "hosts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", String(255), nullable=False, unique=True),  # /etc/machine-id or --host
    Column("name", String(255), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("boot_id", String(64), nullable=False),
    Column("interval_seconds", Integer, nullable=False),
    # Seconds the host's clock was ahead of the collector's (negative: behind) at its last hello.
    Column("clock_skew", Float),
    # The host's last message the collector refused, and why.
    Column("last_refusal_at", DateTime),
    Column("last_refusal", Text),
    # What the observations removed by retention (collector/retention.py) still tell: the host's last one,
    # and the scans it dropped and the times its kernel lost events, summed.
    Column("pruned_gaps", Integer, nullable=False, server_default="0"),
    Column("pruned_events_lost", Integer, nullable=False, server_default="0"),
    Column("last_pruned_observation", DateTime),
)

# What each applied message of a host's stream writes (migration 0019), apart from who the host is (``hosts``,
# written at its hello): one row per host, made with its ``hosts`` row.
host_state = Table(
    "host_state",
    metadata,
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True, autoincrement=False),
    # The last applied message: a Delta must be based on it.
    Column("epoch", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    # Scan time of the last applied message, and whether that scan saw everything.
    Column("last_taken_at", DateTime),
    Column("complete", Boolean, nullable=False),
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    # The collector applying the host's stream (several may share a PostgreSQL database): a number each
    # hello raises, the holder's name, and when its claim lapses unless it applies another message.
    Column("lease", BigInteger, nullable=False, server_default="0"),
    Column("lease_holder", String(255)),
    Column("lease_until", DateTime),
)

host_addresses = Table(
    "host_addresses",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("interface", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Column("valid_from", DateTime, nullable=False),
    Column("valid_to", DateTime),
    Index(None, "host_ref", "valid_to"),
    Index(None, "address"),
)

# The history tables' ``host_ref`` keys (sockets, flows, observations, closed_flows) hold on SQLite only; on
# PostgreSQL migration 0020 dropped them: checked there row by row, they cost a new host's snapshot 40% of the
# server's time.
sockets = Table(
    "sockets",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    # Digest of the identity below (collector.convert.key_digest): finds a host's open row for a key in one
    # index probe.  Compared as plain text on every database (collector.stepwise reads ranges of it).
    Column("key", KEY, nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("proto", String(8), nullable=False),
    Column("family", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("inode", BigInteger),
    Column("local_address", String(64)),
    Column("local_port", Integer),
    Column("remote_address", String(64)),
    Column("remote_port", Integer),
    Column("path", Text),
    Column("state", String(16), nullable=False),
    Column("peer_inode", BigInteger),
    Column("uid", BigInteger),
    Column("user", String(255)),
    Column("pid", Integer),
    Column("process", String(255)),
    Column("cmdline", Text),
    Column("owners", Integer, nullable=False),
    Column("rx_queue", BigInteger, nullable=False),
    Column("tx_queue", BigInteger, nullable=False),
    Column("valid_from", DateTime, nullable=False),
    Column("valid_to", DateTime),
    # Lifetime class of a closed row (collector/spans.py); null while the row is open.
    Column("span", SmallInteger),
    # Key of the host's flow the socket belongs to (collector/flows.py); null for sockets of no flow.
    Column("flow", String(32)),
    Index(None, "host_ref", "valid_from"),
    Index(None, "span", "valid_from", "valid_to"),
    # A host's rows open at T by lifetime class (`history --host H --since T`).
    Index(None, "host_ref", "span", "valid_from", "valid_to"),
    Index(None, "valid_to"),
    Index(None, "local_port"),
)
# Listeners are a few rows among many connections: "what listened at T" reads only them.
Index(
    "ix_sockets_listening",
    sockets.c.host_ref,
    sockets.c.valid_from,
    sqlite_where=sockets.c.state.in_(("LISTEN", "UNCONN")),
    postgresql_where=sockets.c.state.in_(("LISTEN", "UNCONN")),
)
# At most one open row per socket of a host: the database itself refuses a duplicate.
Index(
    "uq_sockets_open_key",
    sockets.c.host_ref,
    sockets.c.key,
    unique=True,
    sqlite_where=sockets.c.valid_to.is_(None),
    postgresql_where=sockets.c.valid_to.is_(None),
)
# "Which listeners were open at T" by lifetime class, among listeners alone.
Index(
    "ix_sockets_listening_span",
    sockets.c.span,
    sockets.c.valid_from,
    sockets.c.valid_to,
    sqlite_where=sockets.c.state.in_(("LISTEN", "UNCONN")),
    postgresql_where=sockets.c.state.in_(("LISTEN", "UNCONN")),
)
# A host's open listeners, read when the store files new connections under flows.
Index(
    "ix_sockets_open_listeners",
    sockets.c.host_ref,
    sqlite_where=and_(sockets.c.valid_to.is_(None), sockets.c.state.in_(("LISTEN", "UNCONN"))),
    postgresql_where=and_(sockets.c.valid_to.is_(None), sockets.c.state.in_(("LISTEN", "UNCONN"))),
)
# Unix sockets are paired by inode when asked who talks to whom: "alive at T" among them alone.
Index(
    "ix_sockets_unix",
    sockets.c.span,
    sockets.c.valid_from,
    sockets.c.valid_to,
    sqlite_where=sockets.c.proto == "unix",
    postgresql_where=sockets.c.proto == "unix",
)

# A host's connected inet sockets folded into flows (collector/flows.py): per flow, the number of its
# sockets open, as intervals like the sockets'.
flows = Table(
    "flows",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(32), nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("proto", String(8), nullable=False),
    Column("role", String(1), nullable=False),  # s: served (accepted), c: calling out, n: not folded
    Column("process", String(255)),
    Column("local_address", String(64)),
    Column("local_port", Integer),  # null when folded away (role c)
    Column("remote_address", String(64)),
    Column("remote_port", Integer),  # null when folded away (role s)
    Column("connections", Integer, nullable=False),
    Column("since", DateTime, nullable=False),  # when the flow last went from no open socket to some
    Column("valid_from", DateTime, nullable=False),
    Column("valid_to", DateTime),
    Column("span", SmallInteger),
    Index(None, "span", "valid_from", "valid_to"),
    Index(None, "host_ref", "valid_from"),
)
Index(
    "uq_flows_open_key",
    flows.c.host_ref,
    flows.c.key,
    unique=True,
    sqlite_where=flows.c.valid_to.is_(None),
    postgresql_where=flows.c.valid_to.is_(None),
)

observations = Table(
    "observations",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # snapshot, delta, heartbeat
    Column("taken_at", DateTime, nullable=False),
    Column("received_at", DateTime, nullable=False),
    Column("added", Integer, nullable=False),
    Column("removed", Integer, nullable=False),
    Column("changed", Integer, nullable=False),
    Column("complete", Boolean, nullable=False),  # the scan saw everything
    Column("gaps", Integer, nullable=False, server_default="0"),  # scans before it the agent had to drop
    Column("coverage", Text),  # JSON; null when unchanged since the previous message
    Column("events_lost", Integer, nullable=False, server_default="0"),  # times the kernel dropped destroy events
    UniqueConstraint("host_ref", "epoch", "seq"),
    Index(None, "host_ref", "taken_at"),
)

# The observations that report dropped scans or lost events: `hosts` sums these alone.  The condition is
# written with literal values, which SQLite needs to see that a query's WHERE implies the index's.
LOSSES = or_(observations.c.gaps > literal_column("0"), observations.c.events_lost > literal_column("0"))
Index(
    "ix_observations_losses",
    observations.c.host_ref,
    observations.c.taken_at,
    sqlite_where=LOSSES,
    postgresql_where=LOSSES,
)

# Connections that closed between two scans, from socket-destroy events: one row per flow per message,
# keyed as ``flows`` (client ports folded away by role); ``taken_at`` is the reporting scan's time.
closed_flows = Table(
    "closed_flows",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("taken_at", DateTime, nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("proto", String(8), nullable=False),
    Column("role", String(1), nullable=False),  # s: this end served, c: it called, n: both ports kept
    Column("process", String(255)),  # this end's process; null when unknown
    Column("local_address", String(64), nullable=False),
    Column("local_port", Integer),  # null when folded away (role c)
    Column("remote_address", String(64), nullable=False),
    Column("remote_port", Integer),  # null when folded away (role s)
    Column("connections", Integer, nullable=False),  # closed in the interval
    Column("short_lived", Integer, nullable=False),  # of which no scan saw open
    Column("sent_bytes", BigInteger),  # by this end; null when unknown (UDP)
    Column("received_bytes", BigInteger),
    Column("first_at", DateTime, nullable=False),
    Column("last_at", DateTime, nullable=False),
    Index(None, "last_at"),
    Index(None, "host_ref", "last_at"),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", String(255), nullable=False),  # the host the token may report for (its --host or machine id)
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256 of the token; the token is not kept
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime),
    Column("host_name", String(255)),  # the name the host reports under, when given at enrollment
    Column("last_used_at", DateTime),  # the last stream that presented the token
    Index(None, "host_id"),
)

# One row: history that ended before ``horizon`` was removed (collector/retention.py), and the last prune.
# On PostgreSQL sockets, flows, observations and closed_flows are partitioned by time (migration 0014).
retention = Table(
    "retention",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("horizon", DateTime),
    Column("last_pruned_at", DateTime),
    Column("rows_removed", BigInteger),
    Column("partitions_removed", Integer),
)

# When each listener (host, proto, port or path) whose rows retention removed first listened: `audit` says
# when a listener was first seen.
pruned_listeners = Table(
    "pruned_listeners",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_ref", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("proto", String(8), nullable=False),
    Column("local_port", Integer),
    Column("path", Text),
    Column("first_seen", DateTime, nullable=False),
    Index(None, "host_ref"),
)

# The documented views (current_sockets, listeners, socket_history, edges) are made by the
# migrations, which state their SQL; see migrations/versions.
