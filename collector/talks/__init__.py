"""Who talks to whom: connections folded into edges between processes on hosts.

An open inet socket with a peer (``rules.connected``) on host A with remote R:P is one end of a connection.
R is resolved to the fleet host that held R at that moment (loopback stays on A); addresses no host held are
external endpoints.  The server is the end with evidence, a listener (``rules.serving``); only without it does
a heuristic decide (an ephemeral port is the client's, else the lower port serves).  Each edge says how its
direction was decided.

A connection seen from both ends counts once.  Client ports are folded away: one edge per (proto, client
host, client process, server host, server address and port, server process), with the number of connections
and when they were first and last seen.  Connected Unix sockets pair processes on one host (``unix``).

Two ways lead to edges, both folded in the database by the same last step (``fold``): at a moment, from the
flows the store keeps (``moment``); over a window, from the socket rows (``window``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, select

from sockfleet.collector import db
from sockfleet.collector.queries import Observed, observed
from sockfleet.collector.rules import DIRECTIONS
from sockfleet.collector.schema import hosts
from sockfleet.collector.talks import closed, unix
from sockfleet.collector.talks import moment as at_moment
from sockfleet.collector.talks import window as over_window
from sockfleet.collector.talks.narrow import Narrow, held_addresses
from sockfleet.collector.times import now

EDGE_FIELDS = (
    "proto",
    "client_host",
    "client_address",
    "client_process",
    "server_host",
    "server_address",
    "server_port",
    "server_process",
    "connections",
    "short_lived",
    "client_bytes",
    "server_bytes",
    "first_seen",
    "last_seen",
    "direction",
)


# The fields an edge's folded row gives as they are.
SQL_FIELDS = (
    "proto",
    "client_address",
    "client_process",
    "server_address",
    "server_port",
    "server_process",
    "connections",
    "first_seen",
)


@dataclass(frozen=True, slots=True)
class Edge:
    """One edge, with the documented fields (``EDGE_FIELDS``); ``edge["proto"]`` reads a field by its name."""

    proto: str
    client_host: str | None
    client_address: str | None
    client_process: str | None
    server_host: str | None
    server_address: str | None
    server_port: int | None
    server_process: str | None
    connections: int
    first_seen: datetime | None
    last_seen: datetime | None
    direction: str
    short_lived: int = 0  # connections in the window that no scan saw (from socket-destroy events)
    client_bytes: int | None = None  # bytes each side sent over the connections that closed in the window
    server_bytes: int | None = None

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def row(self) -> dict[str, Any]:
        """The edge as a row of the documented fields (for output: a new dict each time)."""
        return {name: getattr(self, name) for name in EDGE_FIELDS}


@dataclass(frozen=True, slots=True)
class Window:
    """The sockets alive at ``start`` (``end`` None), or at any time within [start, end]; now if start is None."""

    start: datetime | None
    end: datetime | None = None

    @property
    def since(self) -> datetime | None:
        """Where a window starts; None for a moment, which is not a window."""
        return self.start if self.end is not None else None


def edges(conn: Connection, window: Window, host: str | None = None, port: int | None = None) -> list[Edge]:
    """Every edge alive in ``window`` between hosts observed then (and external endpoints).

    With ``host``, only the edges with that host at one end; with ``port``, only those to that server
    port.  The folding runs in the database, and reads only the sockets that can make such edges.
    """
    seen = observed(conn, window.end or window.start, window.since)
    refs = set(seen.known) if window.start is not None else set(seen.known) | set(seen.unknown)
    if not refs:
        return []
    names = {row.id: row.name for row in conn.execute(select(hosts.c.id, hosts.c.name))}
    moment = window.end or window.start or now()
    narrow = Narrow(port=port)
    if host is not None:
        mine = [ref for ref, name in names.items() if name == host and ref in refs]
        narrow = Narrow(mine, held_addresses(conn, mine, moment), port)
    query = _query(window, sorted(refs), len(refs) == len(names), moment, narrow)
    with db.large_joins(conn):
        rows = conn.execute(query).all()
    found = [_edge(row._mapping, names, seen) for row in rows]
    if window.end is not None and window.start is not None:
        ended = closed.closings(conn, window.start, window.end, sorted(refs), narrow)
        found = with_closed(found, closed.merged(ended), names)
    kept = [e for e in found if host in (None, e.client_host, e.server_host) and port in (None, e.server_port)]
    return sorted(kept, key=_order)


def _query(window: Window, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow) -> Select[Any]:
    """Inet edges (from flows at a moment, from socket rows over a window), and Unix pairs."""
    pairs = unix.unix_edges(unix.connected(window.start, window.end, refs, every_host, moment, narrow))
    if window.end is None:
        inet = at_moment.inet_edges(window.start, refs, every_host, moment, narrow)
    else:
        assert window.start is not None
        inet = over_window.inet_edges(window.start, window.end, refs, every_host, moment, narrow)
    return inet.union_all(pairs)  # type: ignore[return-value]


def _edge(row: Any, names: dict[int, str], seen: Observed) -> Edge:
    """An edge of a folded row.  It was last seen by the last scan of its hosts that saw it open: not later than
    the last message of either (a host that went silent does not keep its connections alive)."""
    last_seen = row["last_seen"]
    scans = [seen.last[ref] for ref in (row["client_ref"], row["server_ref"]) if ref in seen.last]
    if scans and last_seen is not None:
        last_seen = min(last_seen, max(scans))
    fields = {name: row[name] for name in SQL_FIELDS}
    return Edge(
        **fields,
        client_host=names.get(row["client_ref"]),
        server_host=names.get(row["server_ref"]),
        last_seen=last_seen,
        direction=DIRECTIONS[row["evidence"]],
    )


def _order(edge: Edge) -> tuple[Any, ...]:
    return (
        edge.server_host or "~",
        edge.server_port or 0,
        edge.client_host or "~",
        edge.client_process or "",
        edge.proto,
    )


def with_closed(found: list[Edge], ended: list[closed.Closing], names: dict[int, str]) -> list[Edge]:
    """The window's edges with the connections that closed in it: short-lived ones counted (on the edge they
    belong to, or on a new one), and the bytes each side sent.  A view whose processes match no edge goes
    to an edge between the same ends and port (the processes one end could not know), so that no byte is
    left out; short-lived connections with no edge at all make one."""
    out = list(found)
    exact = {(e.proto, e.client_host, e.client_address, e.client_process, e.server_host, e.server_port): i
             for i, e in enumerate(out)}  # fmt: skip
    loose = {(e.proto, e.client_host, e.client_address, e.server_host, e.server_port): i for i, e in enumerate(out)}
    for c in sorted(ended, key=lambda view: not view.short_lived):  # edges first, then bytes onto them
        client_host, server_host = names.get(c.client_ref or -1), names.get(c.server_ref or -1)
        address = c.client_address if client_host is None else None
        at = exact.get((c.proto, client_host, address, c.client_process, server_host, c.server_port))
        if at is None and not c.short_lived:
            at = loose.get((c.proto, client_host, address, server_host, c.server_port))
        if at is not None:
            out[at] = _added(out[at], c)
        elif c.short_lived:
            out.append(_new_edge(c, client_host, server_host))
            exact[(c.proto, client_host, address, c.client_process, server_host, c.server_port)] = len(out) - 1
            loose.setdefault((c.proto, client_host, address, server_host, c.server_port), len(out) - 1)
    return out


def _added(e: Edge, c: closed.Closing) -> Edge:
    return replace(
        e,
        connections=e.connections + c.short_lived,
        short_lived=e.short_lived + c.short_lived,
        client_bytes=_plus(e.client_bytes, c.client_bytes),
        server_bytes=_plus(e.server_bytes, c.server_bytes),
        first_seen=min(e.first_seen, c.first_seen) if e.first_seen else c.first_seen,
        last_seen=max(e.last_seen, c.last_seen) if e.last_seen else c.last_seen,
    )


def _plus(held: int | None, more: int | None) -> int | None:
    if more is None:
        return held
    return more if held is None else held + more


def _new_edge(c: closed.Closing, client_host: str | None, server_host: str | None) -> Edge:
    return Edge(
        proto=c.proto,
        client_host=client_host,
        client_address=c.client_address if client_host is None else None,
        client_process=c.client_process,
        server_host=server_host,
        server_address=c.server_address,
        server_port=c.server_port,
        server_process=c.server_process,
        connections=c.short_lived,
        first_seen=c.first_seen,
        last_seen=c.last_seen,
        direction=c.direction,
        short_lived=c.short_lived,
        client_bytes=c.client_bytes,
        server_bytes=c.server_bytes,
    )
