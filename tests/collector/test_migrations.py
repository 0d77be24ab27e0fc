"""The schema is made only by migrating: one head, upgrade from empty, downgrade round trip, models equal."""

from __future__ import annotations

import hashlib
import importlib
import re
from types import SimpleNamespace
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, ForeignKeyConstraint, Index, inspect, text

from sockfleet.collector import convert, db
from sockfleet.collector.schema import metadata
from sockfleet.collector.store import Store
from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.fleet import at

VIEWS = {"current_sockets", "listeners", "socket_history", "edges"}


def test_one_head() -> None:
    assert ScriptDirectory.from_config(db.alembic_config()).get_heads() == [db.head()]


def test_upgrade_from_empty(empty_engine: Engine) -> None:
    assert db.current(empty_engine) is None
    db.migrate(empty_engine)
    assert db.current(empty_engine) == db.head()
    names = set(inspect(empty_engine).get_table_names())
    assert {"hosts", "host_addresses", "sockets", "observations"} <= names
    assert set(inspect(empty_engine).get_view_names()) >= VIEWS


# On PostgreSQL the history tables are partitioned (0014): their partitions are tables of their own, and the
# keys a partitioned table cannot hold as the metadata states them are held another way.
PARTITION = re.compile(r"^(sockets|flows|observations|closed_flows)_(open|before|p\d{8})$")
PARTITIONED_KEYS = {
    ("remove_index", "ix_sockets_id"),  # no primary key (valid_to may be null): a plain index on id
    ("remove_index", "ix_flows_id"),
    ("add_index", "uq_sockets_open_key"),  # on the open partition, sockets_open, alone
    ("add_index", "ix_sockets_open_listeners"),
    ("add_index", "uq_flows_open_key"),
    ("remove_constraint", "host_ref epoch seq taken_at"),  # the unique key holds the partition key
    ("add_constraint", "host_ref epoch seq"),
    # No history row's host is checked against hosts, row by row (0020).
    ("add_fk", "sockets.host_ref"),
    ("add_fk", "flows.host_ref"),
    ("add_fk", "observations.host_ref"),
    ("add_fk", "closed_flows.host_ref"),
}


HISTORY_KEYS = """SELECT conrelid::regclass::text FROM pg_constraint
WHERE contype = 'f' AND conrelid::regclass::text ~ '^(sockets|flows|observations|closed_flows)(_|$)'"""


def _not_a_partition(name: str | None, type_: str, _parent: object) -> bool:
    return not (type_ == "table" and PARTITION.match(name or ""))


def _named(change: tuple[Any, ...]) -> tuple[str, str]:
    kind, item = change[0], change[1]
    if isinstance(item, Index):
        return kind, str(item.name)
    if isinstance(item, ForeignKeyConstraint):
        return kind, " ".join(f"{item.table.name}.{column.name}" for column in item.columns)
    return kind, " ".join(column.name for column in item.columns)


def test_models_equal_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": _not_a_partition})
        diff = compare_metadata(context, metadata)
    if engine.dialect.name == "postgresql":
        assert {_named(change) for change in diff} == PARTITIONED_KEYS
        with engine.connect() as conn:
            held = set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename LIKE '%_open'")).scalars())
            checked = conn.execute(text(HISTORY_KEYS)).scalars().all()
        assert {"uq_sockets_open_key", "ix_sockets_open_listeners", "uq_flows_open_key"} <= held
        assert checked == []  # nor in any partition, made before 0020 or after
    else:
        assert diff == []


def test_downgrade_round_trip(engine: Engine) -> None:
    db.downgrade(engine, "base")
    assert db.current(engine) is None
    assert not {"hosts", "sockets"} & set(inspect(engine).get_table_names())
    assert not VIEWS & set(inspect(engine).get_view_names())
    db.migrate(engine)
    assert db.current(engine) == db.head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM listeners")).scalar_one() == 0


KEYS = [
    pb.SocketKey(
        netns=4026531840,
        proto=pb.PROTO_TCP,
        family=pb.FAMILY_INET,
        type=pb.SOCK_TYPE_STREAM,
        inode=77,
        local_address="0.0.0.0",
        local_port=22,
    ),
    pb.SocketKey(
        netns=1,
        proto=pb.PROTO_TCP,
        family=pb.FAMILY_INET6,
        type=pb.SOCK_TYPE_STREAM,
        inode=2**40,
        local_address="::ffff:10.0.0.1",
        local_port=443,
        remote_address="fe80::1",
        remote_port=51000,
    ),
    pb.SocketKey(
        netns=1,
        proto=pb.PROTO_UDP,
        family=pb.FAMILY_INET,
        type=pb.SOCK_TYPE_DGRAM,
        local_address="127.0.0.1",
        local_port=53,
    ),
    pb.SocketKey(
        netns=1,
        proto=pb.PROTO_UNIX,
        family=pb.FAMILY_UNIX,
        type=pb.SOCK_TYPE_SEQPACKET,
        inode=9,
        path="@/tmp/.X11-unix/X0",
    ),
    pb.SocketKey(netns=1, proto=pb.PROTO_UNIX, family=pb.FAMILY_UNIX, type=pb.SOCK_TYPE_DGRAM, inode=10),
]


def _row(key: pb.SocketKey) -> SimpleNamespace:
    """A stored row's identity columns, as the store writes them."""
    _, *identity = convert.key_row(key)
    return SimpleNamespace(**dict(zip(convert.IDENTITY_COLUMNS, identity, strict=True)))


def test_the_frozen_digests_are_the_live_ones() -> None:
    revision = importlib.import_module("sockfleet.migrations.versions.0011_hosts_refusals_and_key_digests")
    for key in KEYS:
        assert revision.known_fields_digest(_row(key)) == convert.key_digest(key)
        before = hashlib.blake2b(key.SerializeToString(deterministic=True), digest_size=16).hexdigest()
        assert revision.serialized_key_digest(_row(key)) == before


def test_rows_stored_before_0011_are_the_same_sockets_after(empty_engine: Engine) -> None:
    db.migrate(empty_engine, "0010")
    revision = importlib.import_module("sockfleet.migrations.versions.0011_hosts_refusals_and_key_digests")
    listener = fleet.tcp_listener(80)
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hosts (host_id, name, agent_version, boot_id, interval_seconds, epoch, seq, last_taken_at, "
                "complete, first_seen, last_seen) VALUES ('id-web-1', 'web-1', 'old', 'boot', 60, 1, 1, :t, true, :t, :t)"
            ),
            {"t": at(0)},
        )
        conn.execute(
            text(
                "INSERT INTO sockets (host_ref, key, netns, proto, family, type, inode, local_address, local_port, state, "
                'owners, rx_queue, tx_queue, valid_from, process, pid, uid, "user", cmdline) VALUES (1, :key, :netns, '
                "'tcp', 'inet', 'stream', 800, '0.0.0.0', 80, 'LISTEN', 1, 0, 0, :t, 'nginx', 100, 0, 'root', 'nginx')"
            ),
            {"key": revision.serialized_key_digest(_row(listener.key)), "netns": fleet.NETNS, "t": at(0)},
        )
    db.migrate(empty_engine)
    store = Store(empty_engine)
    outcome = store.apply(1, convert.scan(fleet.snapshot(1, at(1), [listener], epoch=2)))
    assert outcome.acked and outcome.rows_written == 0  # the stored row is still this socket's
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sockets WHERE valid_to IS NULL")).scalar_one() == 1
