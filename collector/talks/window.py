"""Edges over a window (``talks --since``), from the socket rows themselves: every connection alive at any
moment of it counts, short-lived ones included."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, DateTime, Select, Subquery, bindparam, func, null, or_
from sqlalchemy import select as select_

from sockfleet.collector import rules, spans
from sockfleet.collector.schema import sockets
from sockfleet.collector.talks.ends import ends_of, listener_rows, listeners, with_peers
from sockfleet.collector.talks.fold import fold, sided
from sockfleet.collector.talks.narrow import Narrow, not_ended
from sockfleet.connections import WILDCARDS

CARRIED = (
    "proto",
    "host_ref",
    "peer_ref",
    "process",
    "local_port",
    "remote_port",
    "laddr",
    "raddr",
    "valid_from",
    "last",
)
# A connection's two ends meet on these (client ports still apart), as (served, calling) columns.
CONNECTION = {
    "c_addr": ("raddr", "laddr"),
    "c_port": ("remote_port", "local_port"),
    "s_addr": ("laddr", "raddr"),
    "s_port": ("local_port", "remote_port"),
}


def connected(
    start: datetime, end: datetime, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow
) -> Subquery:
    """Connected inet sockets alive in the window, their addresses made plain."""
    s = sockets.c
    conditions = [spans.alive(start, end), *not_ended(start)]
    if not every_host:
        conditions.append(s.host_ref.in_(refs))
    last = func.coalesce(s.valid_to, bindparam("moment", moment, type_=DateTime)).label("last")
    plain = (rules.plain_sql(s.local_address).label("laddr"), rules.plain_sql(s.remote_address).label("raddr"))
    kept = (s.host_ref, s.netns, s.proto, s.process, s.local_port, s.remote_port, s.valid_from)
    return select_(*kept, last, *plain).where(*conditions, *narrow.inet(), rules.connected_sql(s)).subquery("inet")


def inet_edges(
    start: datetime, end: datetime, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow
) -> Select[Any]:
    alive = connected(start, end, refs, every_host, moment, narrow)
    c = _connections(_judged(alive, listener_rows(start, end, refs, every_host), refs, moment)).c
    return fold(c, func.count(), func.min(c.first_seen), func.max(c.last_seen))


def _judged(alive: Subquery, conditions: list[ColumnElement[bool]], refs: list[int], moment: datetime) -> Subquery:
    """Each connected socket with its far end, the listeners at either end, and which end serves.

    A socket may find two listeners on one end (one on its address, one on a wildcard): the copies meet again
    in the grouping by connection, and count once.
    """
    ends = with_peers(alive, refs, moment).subquery("ends")
    e = ends.c
    found = listeners(conditions)
    local_end, remote_end = ends_of(e)
    joins: Any = ends
    local, remote = found.alias("local_listener"), found.alias("remote_listener")
    for listener, (ref, netns, port, address) in ((local, local_end), (remote, remote_end)):
        held = or_(listener.c.laddr == address, listener.c.laddr.in_(WILDCARDS))
        joins = joins.outerjoin(
            listener,
            (listener.c.host_ref == ref)
            & (listener.c.netns == netns)
            & (listener.c.proto == e.proto)
            & (listener.c.local_port == port)
            & held,
        )
    listens = (local.c.host_ref.is_not(None), remote.c.host_ref.is_not(None))
    server_side, evidence = rules.serving_sql(*listens, e.local_port, e.remote_port)
    processes = (local.c.process.label("local_process"), remote.c.process.label("remote_process"))
    judgement = (server_side.label("server_side"), evidence.label("evidence"))
    return select_(*(e[n] for n in CARRIED), *processes, *judgement).select_from(joins).subquery("judged")


def _connections(judged: Subquery) -> CTE:
    """One row per connection: both of its ends meet here.  The server's own view of its process wins over
    what the client's end inferred from the listener."""
    j = judged.c
    side = sided(j.server_side == 1)
    meet = [side(j[server], j[client]) for server, client in CONNECTION.values()]
    server_process = func.coalesce(
        func.max(side(func.coalesce(j.local_process, j.process), null())), func.max(j.remote_process)
    )
    ends = (
        func.max(side(j.peer_ref, j.host_ref)).label("client_ref"),
        func.max(side(null(), j.process)).label("client_process"),
        func.max(side(j.host_ref, j.peer_ref)).label("server_ref"),
        server_process.label("server_process"),
    )
    times = (func.max(j.evidence).label("evidence"), func.min(j.valid_from).label("first_seen"))
    labelled = (column.label(name) for column, name in zip(meet, CONNECTION, strict=True))
    columns = (j.proto, *labelled, *ends, *times, func.max(j.last).label("last_seen"))
    return select_(*columns).group_by(j.proto, *meet).cte("connections")
