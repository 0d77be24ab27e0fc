"""Every statement the store runs, built once with bound parameters: a collector applies thousands of
messages a second, and building SQLAlchemy statements per message would cost more than running them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update

from sockfleet.collector import convert, flows, rules, spans
from sockfleet.collector.schema import closed_flows, host_addresses, hosts, observations, sockets
from sockfleet.collector.schema import flows as flow_rows

CHUNK = 500  # keys per IN (...) list
STEP_SOCKETS = 500  # sockets a step of a large snapshot writes, about 20 ms of work (collector.stepwise)
VERSIONED = tuple(sockets.c[name] for name in convert.VERSIONED_COLUMNS)
INSERT_COLUMNS = ("host_ref", "valid_from", *convert.ROW_COLUMNS, "flow")
# Where a stored row's fields are, in (ref, moment, *row.values()), for its flow.
AT = {
    name: 2 + convert.ROW_COLUMNS.index(name)
    for name in ("netns", "proto", "state", "process", "local_address", "local_port", "remote_address", "remote_port")
}

HOST = select(
    hosts.c.epoch, hosts.c.seq, hosts.c.first_seen, hosts.c.last_seen, hosts.c.last_taken_at, hosts.c.complete
).where(hosts.c.id == bindparam("ref"))
HOST_FOR_UPDATE = HOST.with_for_update()
KNOWN_HOST = select(hosts.c.id, hosts.c.name, hosts.c.last_taken_at).where(hosts.c.host_id == bindparam("host_id"))
NAMED_OTHER = select(hosts.c.host_id).where(hosts.c.name == bindparam("name"), hosts.c.host_id != bindparam("host_id"))
OPEN_ADDRESSES = select(
    host_addresses.c.id, host_addresses.c.netns, host_addresses.c.interface, host_addresses.c.address
).where(host_addresses.c.host_ref == bindparam("ref"), host_addresses.c.valid_to.is_(None))
HOST_APPLIED = (
    update(hosts)
    .where(hosts.c.id == bindparam("ref"))
    .values(
        epoch=bindparam("epoch"),
        seq=bindparam("seq"),
        last_taken_at=bindparam("moment"),
        complete=bindparam("is_complete"),
        first_seen=bindparam("first"),
        last_seen=bindparam("last"),
    )
)
OBSERVED = insert(observations)
CLOSED_FLOWS = insert(closed_flows)
OPEN_ROWS = select(sockets.c.id, sockets.c.key, *VERSIONED).where(
    sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None)
)
CLOSE_KEYS = (
    update(sockets)
    .where(
        and_(
            sockets.c.host_ref == bindparam("ref"),
            sockets.c.key.in_(bindparam("keys", expanding=True)),
            sockets.c.valid_to.is_(None),
        )
    )
    .values(valid_to=bindparam("moment"), span=spans.closing_span())
    .returning(sockets.c.flow, sockets.c.proto, sockets.c.state)
)
# The rows are open ones: saying so reads only the open rows (on PostgreSQL, the open partition alone).
CLOSE_IDS = (
    update(sockets)
    .where(sockets.c.id.in_(bindparam("ids", expanding=True)), sockets.c.valid_to.is_(None))
    .values(valid_to=bindparam("moment"), span=spans.closing_span())
    .returning(sockets.c.flow, sockets.c.proto, sockets.c.state)
)
# The host's open listeners, through their partial index (its condition written as the index's, and named
# for SQLite, whose planner would otherwise walk the host's whole history).
LISTENING = (
    select(sockets.c.netns, sockets.c.proto, sockets.c.local_address, sockets.c.local_port)
    .where(sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None), rules.accepts_sql(sockets.c))
    .with_hint(sockets, "INDEXED BY ix_sockets_open_listeners", "sqlite")
)
# Closes the open rows of the flows a message moves, and returns what they held.
CLOSE_FLOWS = (
    update(flow_rows)
    .where(
        flow_rows.c.host_ref == bindparam("ref"),
        flow_rows.c.key.in_(bindparam("keys", expanding=True)),
        flow_rows.c.valid_to.is_(None),
    )
    .values(valid_to=bindparam("moment"), span=spans.closing_span(flow_rows))
    .returning(
        flow_rows.c.key,
        *(flow_rows.c[name] for name in flows.IDENTITY_COLUMNS),
        flow_rows.c.connections,
        flow_rows.c.since,
        flow_rows.c.valid_from,
    )
)
FLOW_COLUMNS = ("host_ref", "key", *flows.IDENTITY_COLUMNS, "connections", "since", "valid_from")
Counts = tuple[int, int, int]  # sockets added, removed, changed


def _bulk_statements(table: str, columns: tuple[str, ...]) -> tuple[str, str]:
    """INSERT (SQLite) and COPY (PostgreSQL) text for new rows: constant text made from the table's own
    column names; values are always bound."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    return (
        f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' for _ in columns)})",  # noqa: S608
        f"COPY {table} ({quoted}) FROM STDIN",
    )


SOCKETS_BULK = _bulk_statements("sockets", INSERT_COLUMNS)
FLOWS_BULK = _bulk_statements("flows", FLOW_COLUMNS)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
