"""Every statement the store runs, built once with bound parameters: a collector applies thousands of
messages a second, and building SQLAlchemy statements per message would cost more than running them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    DateTime,
    Integer,
    SmallInteger,
    String,
    Table,
    and_,
    any_,
    bindparam,
    func,
    insert,
    select,
    update,
)

from sockfleet.collector import convert, flows, rules, spans
from sockfleet.collector.schema import closed_flows, host_addresses, host_state, hosts, observations, sockets
from sockfleet.collector.schema import flows as flow_rows

CHUNK = 500  # keys per IN (...) list
STEP_SOCKETS = 500  # sockets a step of a large snapshot writes, about 20 ms of work (collector.stepwise)
VERSIONED = tuple(sockets.c[name] for name in convert.VERSIONED_COLUMNS)
INSERT_COLUMNS = ("host_ref", "valid_from", *convert.ROW_COLUMNS, "flow")
# Where a stored row's fields are, in (ref, moment, *row.values), for its flow.
AT = {
    name: 2 + convert.ROW_COLUMNS.index(name)
    for name in ("netns", "proto", "state", "process", "local_address", "local_port", "remote_address", "remote_port")
}

HOST = select(
    host_state.c.epoch,
    host_state.c.seq,
    host_state.c.first_seen,
    host_state.c.last_seen,
    host_state.c.last_taken_at,
    host_state.c.complete,
    host_state.c.lease,
    host_state.c.lease_holder,
    host_state.c.lease_until,
).where(host_state.c.host_ref == bindparam("ref"))
HOST_FOR_UPDATE = HOST.with_for_update()
KNOWN_HOST = (
    select(hosts.c.id, hosts.c.name, host_state.c.last_taken_at)
    .join_from(hosts, host_state, host_state.c.host_ref == hosts.c.id)
    .where(hosts.c.host_id == bindparam("host_id"))
)
NAMED_OTHER = select(hosts.c.host_id).where(hosts.c.name == bindparam("name"), hosts.c.host_id != bindparam("host_id"))
OPEN_ADDRESSES = select(
    host_addresses.c.id, host_addresses.c.netns, host_addresses.c.interface, host_addresses.c.address
).where(host_addresses.c.host_ref == bindparam("ref"), host_addresses.c.valid_to.is_(None))
HOST_APPLIED = (
    update(host_state)
    .where(host_state.c.host_ref == bindparam("ref"))
    .values(
        epoch=bindparam("epoch"),
        seq=bindparam("seq"),
        last_taken_at=bindparam("moment"),
        complete=bindparam("is_complete"),
        first_seen=bindparam("first"),
        last_seen=bindparam("last"),
        lease_until=bindparam("lease_until"),
    )
)
# Inline: no RETURNING of the new row's id, so that PostgreSQL may run them in a pipeline (store.writing).
OBSERVED = insert(observations).inline()
CLOSED_FLOWS = insert(closed_flows).inline()
OPEN_ROWS = select(sockets.c.id, sockets.c.key, *VERSIONED).where(
    sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None)
)


def _among(column: Any, name: str, array: bool) -> Any:
    """``column`` is one of the list bound as ``name``: ``IN`` of one parameter per item (SQLite), or ``= ANY``
    of one array (PostgreSQL; ``*_ANY`` statements), whose text stays the same whatever the number of items,
    so that the server prepares it once instead of parsing a list of up to 500 parameters for each message."""
    if array:
        return column == any_(bindparam(name, type_=ARRAY(BigInteger if name == "ids" else String)))
    return column.in_(bindparam(name, expanding=True))


def _close_keys(array: bool) -> Any:
    return (
        update(sockets)
        .where(
            and_(
                sockets.c.host_ref == bindparam("ref"),
                _among(sockets.c.key, "keys", array),
                sockets.c.valid_to.is_(None),
            )
        )
        .values(valid_to=bindparam("moment"), span=spans.closing_span())
        .returning(sockets.c.flow, sockets.c.proto, sockets.c.state)
    )


# The rows are open ones: saying so reads only the open rows (on PostgreSQL, the open partition alone).
def _close_ids(array: bool) -> Any:
    return (
        update(sockets)
        .where(_among(sockets.c.id, "ids", array), sockets.c.valid_to.is_(None))
        .values(valid_to=bindparam("moment"), span=spans.closing_span())
        .returning(sockets.c.flow, sockets.c.proto, sockets.c.state)
    )


CLOSE_KEYS, CLOSE_KEYS_ANY = _close_keys(False), _close_keys(True)
CLOSE_IDS, CLOSE_IDS_ANY = _close_ids(False), _close_ids(True)
# The host's open listeners, through their partial index (its condition written as the index's, and named
# for SQLite, whose planner would otherwise walk the host's whole history).
LISTENING = (
    select(sockets.c.netns, sockets.c.proto, sockets.c.local_address, sockets.c.local_port)
    .where(sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None), rules.accepts_sql(sockets.c))
    .with_hint(sockets, "INDEXED BY ix_sockets_open_listeners", "sqlite")
)


# Closes the open rows of the flows a message moves, and returns what they held (``writing.open_flow``).
_FLOW_CLOSED = (
    flow_rows.c.key,
    *(flow_rows.c[name] for name in flows.IDENTITY_COLUMNS),
    flow_rows.c.connections,
    flow_rows.c.since,
    flow_rows.c.valid_from,
)


def _close_flows(array: bool) -> Any:
    return (
        update(flow_rows)
        .where(
            flow_rows.c.host_ref == bindparam("ref"),
            _among(flow_rows.c.key, "keys", array),
            flow_rows.c.valid_to.is_(None),
        )
        .values(valid_to=bindparam("moment"), span=spans.closing_span(flow_rows))
        .returning(*_FLOW_CLOSED)
    )


CLOSE_FLOWS, CLOSE_FLOWS_ANY = _close_flows(False), _close_flows(True)

# Several hosts' messages at once (PostgreSQL, ``store.group``): their hosts' states locked in the order of their
# ids (two groups never wait for each other in a circle); their sockets and flows closed each at its own
# message's time, from arrays of (host, key, time) in one statement.
HOSTS_FOR_UPDATE = (
    select(host_state.c.host_ref, *HOST.selected_columns)
    .where(host_state.c.host_ref == any_(bindparam("refs", type_=ARRAY(BigInteger))))
    .order_by(host_state.c.host_ref)
    .with_for_update()
)


def _close_many(table: Any, returning: tuple[Any, ...]) -> Any:
    """Close the open rows of (host, key) pairs, each at its own time, given as three arrays of the same length.

    Each pair is looked up in the open rows' unique index.  (Hosts and keys as two lists, ``host_ref = ANY(...)
    AND key = ANY(...)``, would make the index look up every host with every key: fifty hosts with five keys
    each, 12,500 look-ups instead of 250.)  The plan relies on the open rows' statistics: an open partition
    filled since it was last analyzed looks empty to the planner, which then hashes it whole (a hundred thousand
    rows for a hundred hosts), so a serving collector analyzes it once it outgrows them (collector.statistics)."""
    arrays = func.unnest(
        bindparam("refs", type_=ARRAY(BigInteger)),
        bindparam("keys", type_=ARRAY(String)),
        bindparam("moments", type_=ARRAY(DateTime)),
    )
    closing = arrays.table_valued("ref", "key", "moment").render_derived(name="closing")
    return (
        update(table)
        .where(table.c.host_ref == closing.c.ref, table.c.key == closing.c.key, table.c.valid_to.is_(None))
        .values(valid_to=closing.c.moment, span=spans.closing_span_at(closing.c.moment, table))
        .returning(table.c.host_ref, *returning)
    )


CLOSE_KEYS_MANY = _close_many(sockets, (sockets.c.flow, sockets.c.proto, sockets.c.state))
CLOSE_FLOWS_MANY = _close_many(flow_rows, _FLOW_CLOSED)
LISTENING_MANY = (
    select(sockets.c.host_ref, *LISTENING.selected_columns)
    .where(sockets.c.host_ref == any_(bindparam("refs", type_=ARRAY(BigInteger))), sockets.c.valid_to.is_(None))
    .where(rules.accepts_sql(sockets.c))
)
FLOW_COLUMNS = ("host_ref", "key", *flows.IDENTITY_COLUMNS, "connections", "since", "valid_from")
Counts = tuple[int, int, int]  # sockets added, removed, changed


@dataclass(frozen=True, slots=True)
class Bulk:
    """How new rows of one table are written in bulk: ``insert`` (SQLite's executemany, and a few rows on
    PostgreSQL), ``copy`` (PostgreSQL, binary), and the PostgreSQL type of each column the binary COPY sends."""

    insert: str
    copy: str
    types: tuple[str, ...]


# PostgreSQL's binary COPY takes each value in its column's own type (the first that matches: the wider and
# narrower integers are kinds of Integer, Text a kind of String).
_BINARY = {SmallInteger: "int2", BigInteger: "int8", Integer: "int4", DateTime: "timestamp", String: "text"}


def _bulk(table: Table, columns: tuple[str, ...]) -> Bulk:
    """The bulk statements for new rows of ``table``: constant text made from the table's own column names;
    values are always bound.  Binary, a new host's 1,000-socket snapshot (1,000 socket rows and as many flows)
    costs the collector 1.4 ms to send instead of 5.8 ms as text."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    types = tuple(next(name for kind, name in _BINARY.items() if isinstance(table.c[c].type, kind)) for c in columns)
    return Bulk(
        f"INSERT INTO {table.name} ({quoted}) VALUES ({', '.join('?' for _ in columns)})",  # noqa: S608
        f"COPY {table.name} ({quoted}) FROM STDIN (FORMAT BINARY)",
        types,
    )


SOCKETS_BULK = _bulk(sockets, INSERT_COLUMNS)
FLOWS_BULK = _bulk(flow_rows, FLOW_COLUMNS)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
