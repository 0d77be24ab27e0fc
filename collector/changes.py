"""What changed: a host's socket timeline, and listeners and edges opened or closed between two moments."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from sockfleet.collector.queries import SOCKET_FIELDS, Filters, Observed, observed, sockets_at
from sockfleet.collector.schema import hosts, sockets
from sockfleet.collector.talks import EDGE_FIELDS, Window, edges

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
DIFF_FIELDS = ("change", "kind", *SOCKET_FIELDS, *[f for f in EDGE_FIELDS if f not in SOCKET_FIELDS])


def history(
    conn: Connection, host: str, port: int | None = None, path: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Every socket interval of ``host`` (optionally on one local port or path) alive at or after ``since``."""
    ref = conn.execute(select(hosts.c.id).where(hosts.c.name == host)).scalar()
    # By the host's row id, so that the planner walks ix_sockets_host_ref_valid_from in order.
    conditions = [sockets.c.host_ref == ref]
    if port is not None:
        conditions.append(sockets.c.local_port == port)
    if path is not None:
        conditions.append(sockets.c.path == path)
    if since is not None:
        conditions.append(or_(sockets.c.valid_to.is_(None), sockets.c.valid_to > since))
    columns = [hosts.c.name.label("host"), *(sockets.c[name] for name in HISTORY_FIELDS[1:])]
    query = (
        select(*columns)
        .select_from(sockets.join(hosts, hosts.c.id == sockets.c.host_ref))
        .where(*conditions)
        .order_by(sockets.c.valid_from, sockets.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def diff(
    conn: Connection, start: datetime, end: datetime, host: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Listeners and edges opened or closed between ``start`` and ``end``, on hosts observed at both.

    Returns the rows and the names of hosts left out because they were not observed at one of the moments.
    """
    before, after = observed(conn, start), observed(conn, end)
    both = {ref: name for ref, name in before.known.items() if ref in after.known}
    left_out = sorted({*before.unknown.values(), *after.unknown.values()} - set(both.values()))
    if host is not None:
        left_out = [name for name in left_out if name == host]
    names = set(both.values())

    def fleet_edges(connection: Connection, moment: datetime) -> dict[tuple[Any, ...], dict[str, Any]]:
        found = {}
        for edge in edges(connection, Window(moment), host):  # with host: only the edges it is an end of
            ends = {edge["client_host"], edge["server_host"]} - {None}
            if ends <= names:
                found[_key(edge, EDGE_KEY)] = edge
        return found

    def earlier_edges() -> dict[tuple[Any, ...], dict[str, Any]]:
        with conn.engine.connect() as other:
            return fleet_edges(other, start)

    # The edges at the first moment are asked on a connection of their own, alongside the rest.
    separate = conn.engine.url.database not in (None, "", ":memory:")
    with ThreadPoolExecutor(max_workers=1) as pool:
        edges_then_later = pool.submit(earlier_edges) if separate else None
        filters = Filters(host=host)
        rows: list[dict[str, Any]] = []
        # The listeners open at either moment, read once: those open from start to end.
        then, now = {}, {}
        for row in sockets_at(conn, start, filters, True, Observed(both, {}), until=end):
            valid_from, valid_to = row.pop("valid_from"), row.pop("valid_to")
            if valid_from <= start and (valid_to is None or valid_to > start):
                then[_key(row, LISTENER_KEY)] = row
            if valid_from <= end and (valid_to is None or valid_to > end):
                now[_key(row, LISTENER_KEY)] = row
        rows += [{"change": "closed", "kind": "listener", **then[k]} for k in then.keys() - now.keys()]
        rows += [{"change": "opened", "kind": "listener", **now[k]} for k in now.keys() - then.keys()]
        edges_now = fleet_edges(conn, end)
        edges_then = edges_then_later.result() if edges_then_later else fleet_edges(conn, start)
    rows += [{"change": "closed", "kind": "edge", **edges_then[k]} for k in edges_then.keys() - edges_now.keys()]
    rows += [{"change": "opened", "kind": "edge", **edges_now[k]} for k in edges_now.keys() - edges_then.keys()]
    rows.sort(
        key=lambda r: (r["kind"], r.get("host") or r.get("server_host") or "", str(r.get("local_port")), r["change"])
    )
    return rows, left_out


def _key(row: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row.get(name) for name in fields)
