"""Initial schema: hosts, their addresses, socket intervals, observations, and the documented views.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The views as this revision defines them; a later revision that changes them restates them in full.
SOCKET_COLUMNS = (
    "s.netns, s.proto, s.family, s.type, s.state, s.local_address, s.local_port, s.remote_address, "
    's.remote_port, s.path, s.peer_inode, s.inode, s.uid, s."user", s.pid, s.process, s.cmdline, s.owners, '
    "s.rx_queue, s.tx_queue"
)
VIEWS = (
    (
        "socket_history",
        f"SELECT h.name AS host, {SOCKET_COLUMNS}, s.valid_from, s.valid_to "
        "FROM sockets s JOIN hosts h ON h.id = s.host_ref",
    ),
    (
        "current_sockets",
        f"SELECT h.name AS host, {SOCKET_COLUMNS}, s.valid_from "
        "FROM sockets s JOIN hosts h ON h.id = s.host_ref WHERE s.valid_to IS NULL",
    ),
    (
        "listeners",
        "SELECT * FROM current_sockets WHERE (state = 'LISTEN' OR (proto = 'udp' AND state = 'UNCONN') "
        "OR (proto = 'unix' AND type = 'dgram' AND state = 'UNCONN' AND path IS NOT NULL))",
    ),
)


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("last_taken_at", sa.DateTime(), nullable=True),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("host_id", name=op.f("uq_hosts_host_id")),
    )
    op.create_table(
        "host_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("netns", sa.BigInteger(), nullable=False),
        sa.Column("interface", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_to", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_ref"], ["hosts.id"], name=op.f("fk_host_addresses_host_ref_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_addresses")),
    )
    with op.batch_alter_table("host_addresses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_addresses_address"), ["address"], unique=False)
        batch_op.create_index(batch_op.f("ix_host_addresses_host_ref_valid_to"), ["host_ref", "valid_to"], unique=False)

    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("coverage", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_ref"], ["hosts.id"], name=op.f("fk_observations_host_ref_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
        sa.UniqueConstraint("host_ref", "epoch", "seq", name=op.f("uq_observations_host_ref_epoch_seq")),
    )
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_observations_host_ref_taken_at"), ["host_ref", "taken_at"], unique=False)

    op.create_table(
        "sockets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("netns", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.String(length=8), nullable=False),
        sa.Column("family", sa.String(length=8), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("inode", sa.BigInteger(), nullable=True),
        sa.Column("local_address", sa.String(length=64), nullable=True),
        sa.Column("local_port", sa.Integer(), nullable=True),
        sa.Column("remote_address", sa.String(length=64), nullable=True),
        sa.Column("remote_port", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("peer_inode", sa.BigInteger(), nullable=True),
        sa.Column("uid", sa.BigInteger(), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("process", sa.String(length=255), nullable=True),
        sa.Column("cmdline", sa.Text(), nullable=True),
        sa.Column("owners", sa.Integer(), nullable=False),
        sa.Column("rx_queue", sa.BigInteger(), nullable=False),
        sa.Column("tx_queue", sa.BigInteger(), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_to", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["host_ref"], ["hosts.id"], name=op.f("fk_sockets_host_ref_hosts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sockets")),
    )
    with op.batch_alter_table("sockets", schema=None) as batch_op:
        batch_op.create_index(
            "uq_sockets_open_key",
            ["host_ref", "key"],
            unique=True,
            sqlite_where=sa.text("valid_to IS NULL"),
            postgresql_where=sa.text("valid_to IS NULL"),
        )
        batch_op.create_index(batch_op.f("ix_sockets_local_port"), ["local_port"], unique=False)
        batch_op.create_index(batch_op.f("ix_sockets_valid_from"), ["valid_from"], unique=False)
        batch_op.create_index(batch_op.f("ix_sockets_valid_to"), ["valid_to"], unique=False)

    for name, query in VIEWS:
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name, _ in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("sockets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sockets_valid_to"))
        batch_op.drop_index(batch_op.f("ix_sockets_valid_from"))
        batch_op.drop_index(batch_op.f("ix_sockets_local_port"))
        batch_op.drop_index("uq_sockets_open_key")

    op.drop_table("sockets")
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_observations_host_ref_taken_at"))

    op.drop_table("observations")
    with op.batch_alter_table("host_addresses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_host_addresses_host_ref_valid_to"))
        batch_op.drop_index(batch_op.f("ix_host_addresses_address"))

    op.drop_table("host_addresses")
    op.drop_table("hosts")
