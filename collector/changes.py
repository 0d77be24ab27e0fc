"""What changed: a host's socket timeline, and listeners and edges opened or closed between two moments."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from operator import attrgetter
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, or_, select

from sockfleet.collector import spans
from sockfleet.collector.queries import SOCKET_FIELDS, Filters, Observed, observed, sockets_at
from sockfleet.collector.schema import hosts, sockets
from sockfleet.collector.talks import EDGE_FIELDS, Edge, Window, edges

HISTORY_FIELDS = (*SOCKET_FIELDS, "valid_from", "valid_to")
LISTENER_KEY = ("host", "netns", "proto", "type", "local_address", "local_port", "path", "process")
EDGE_KEY = (
    "proto",
    "client_host",
    "client_address",
    "client_process",
    "server_host",
    "server_address",
    "server_port",
    "server_process",
)
T = TypeVar("T")
DIFF_FIELDS = ("change", "kind", *SOCKET_FIELDS, *[f for f in EDGE_FIELDS if f not in SOCKET_FIELDS])


def history(
    conn: Connection, host: str, port: int | None = None, path: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Every socket interval of ``host`` (optionally on one local port or path) alive at or after ``since``.

    With ``since``: the rows open at ``since`` that began before it, then those that began at or after it,
    each from a short range of an index, however long the host's history before ``since``.
    """
    ref = conn.execute(select(hosts.c.id).where(hosts.c.name == host)).scalar()
    wanted = [sockets.c.host_ref == ref]
    if port is not None:
        wanted.append(sockets.c.local_port == port)
    if path is not None:
        wanted.append(sockets.c.path == path)
    if since is None:
        return _intervals(conn, wanted)
    # On PostgreSQL the condition every such row meets also keeps the day partitions that ended before since
    # out of both reads.
    later = [or_(sockets.c.valid_to.is_(None), sockets.c.valid_to > since)]
    pruned = later if conn.dialect.name == "postgresql" else []
    # Open at since: one range per lifetime class of ix_sockets_host_ref_span_valid_from_valid_to.
    before = _intervals(conn, [spans.alive(since, within=(*wanted, sockets.c.valid_from < since)), *pruned])
    # Began at or after since: the host's rows from since on in ix_sockets_host_ref_valid_from.
    return before + _intervals(conn, [*wanted, sockets.c.valid_from >= since, *later])


def _intervals(conn: Connection, conditions: list[ColumnElement[bool]]) -> list[dict[str, Any]]:
    """The socket rows that meet ``conditions``, with the history's fields, in the order they began."""
    columns = [hosts.c.name.label("host"), *(sockets.c[name] for name in HISTORY_FIELDS[1:])]
    query = (
        select(*columns)
        .select_from(sockets.join(hosts, hosts.c.id == sockets.c.host_ref))
        .where(*conditions)
        .order_by(sockets.c.valid_from, sockets.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def diff(
    conn: Connection, start: datetime, end: datetime, host: str | None = None, short_lived: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """Listeners and edges opened or closed between ``start`` and ``end``, on hosts observed at both; with
    ``short_lived``, also the edges that existed only in between (``opened and closed``).

    Returns the rows and the names of hosts left out because they were not observed at one of the moments.
    """
    before, after = observed(conn, start), observed(conn, end)
    both = {ref: name for ref, name in before.known.items() if ref in after.known}
    left_out = sorted({*before.unknown.values(), *after.unknown.values()} - set(both.values()))
    if host is not None:
        left_out = [name for name in left_out if name == host]
    # The edges at the first moment are asked on a connection of their own, alongside the rest.
    separate = conn.engine.url.database not in (None, "", ":memory:")
    with ThreadPoolExecutor(max_workers=1) as pool:
        earlier = pool.submit(_edges_apart, conn, start, host, set(both.values())) if separate else None
        rows = _listener_changes(conn, start, end, both, host)
        edges_now = _fleet_edges(conn, end, host, set(both.values()))
        edges_then = earlier.result() if earlier else _fleet_edges(conn, start, host, set(both.values()))
    rows += _changes("edge", edges_then, edges_now, Edge.row)
    if short_lived:
        rows += _between(conn, start, end, host, set(both.values()), edges_then.keys() | edges_now.keys())
    rows.sort(
        key=lambda r: (r["kind"], r.get("host") or r.get("server_host") or "", str(r.get("local_port")), r["change"])
    )
    return rows, left_out


def _listener_changes(
    conn: Connection, start: datetime, end: datetime, both: dict[int, str], host: str | None
) -> list[dict[str, Any]]:
    """The listeners open at one moment and not the other, read once: those open from start to end."""
    then, now = {}, {}
    for row in sockets_at(conn, start, Filters(host=host), True, Observed(both, {}), until=end):
        valid_from, valid_to = row.pop("valid_from"), row.pop("valid_to")
        if valid_from <= start and (valid_to is None or valid_to > start):
            then[_key(row, LISTENER_KEY)] = row
        if valid_from <= end and (valid_to is None or valid_to > end):
            now[_key(row, LISTENER_KEY)] = row
    return _changes("listener", then, now, dict)


def _changes(
    kind: str, then: dict[tuple[Any, ...], T], now: dict[tuple[Any, ...], T], row: Callable[[T], dict[str, Any]]
) -> list[dict[str, Any]]:
    """What is at one moment and not the other, each made a row (``row``) only then: most of a fleet's
    edges and listeners are at both."""
    closed = [{"change": "closed", "kind": kind, **row(then[key])} for key in then.keys() - now.keys()]
    return closed + [{"change": "opened", "kind": kind, **row(now[key])} for key in now.keys() - then.keys()]


def _fleet_edges(conn: Connection, moment: datetime, host: str | None, names: set[str]) -> dict[tuple[Any, ...], Edge]:
    """The edges at ``moment`` between hosts observed at both moments (with ``host``, only its own)."""
    key = attrgetter(*EDGE_KEY)
    return {
        key(edge): edge
        for edge in edges(conn, Window(moment), host)
        if {edge.client_host, edge.server_host} - {None} <= names
    }


def _between(
    conn: Connection, start: datetime, end: datetime, host: str | None, names: set[str], seen: set[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Edges with connections that opened and closed between the two moments, open at neither."""
    rows = []
    key = attrgetter(*EDGE_KEY)
    for edge in edges(conn, Window(start, end), host):
        ours = {edge.client_host, edge.server_host} - {None} <= names
        if edge.short_lived and ours and key(edge) not in seen:
            rows.append({"change": "opened and closed", "kind": "edge", **edge.row()})
    return rows


def _edges_apart(conn: Connection, moment: datetime, host: str | None, names: set[str]) -> dict[tuple[Any, ...], Edge]:
    with conn.engine.connect() as other:
        return _fleet_edges(other, moment, host, names)


def _key(row: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(map(row.get, fields))
