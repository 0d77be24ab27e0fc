"""Edges at one moment (or now), from the flows the store folded connected sockets into (``collector.flows``).

Flows are judged as sockets are (``collector.talks.window``), then folded: the calling side's flows count
the connections, and a served flow counts only those no calling flow in the fleet accounts for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, DateTime, Select, Subquery, and_, bindparam, func, not_, null, or_
from sqlalchemy import select as select_

from sockfleet.collector import rules, spans
from sockfleet.collector.schema import flows
from sockfleet.collector.talks.ends import (
    ends_of,
    listener_rows,
    listeners,
    on_listener,
    wildcard_listeners,
    with_peers,
)
from sockfleet.collector.talks.fold import fold, sided
from sockfleet.collector.talks.narrow import Narrow, not_ended

KEYS = ("proto", "c_addr", "s_addr", "s_port")  # a connection's endpoints, the client's port folded away


def alive_flows(start: datetime | None, refs: list[int], every_host: bool, narrow: Narrow) -> CTE:
    f = flows.c
    conditions = [spans.alive(start, table=flows), *not_ended(start, flows)]
    if not every_host:
        conditions.append(f.host_ref.in_(refs))
    columns = (f.host_ref, f.netns, f.proto, f.role, f.process, f.local_port, f.remote_port, f.connections, f.since)
    return (
        select_(*columns, f.local_address.label("laddr"), f.remote_address.label("raddr"))
        .where(*conditions, *narrow.inet(flows))
        .cte("alive_flows")
        .prefix_with("MATERIALIZED")
    )


def inet_edges(
    start: datetime | None, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow
) -> Select[Any]:
    alive = alive_flows(start, refs, every_host, narrow)
    views = _views(_judged(alive, listener_rows(start, None, refs, every_host), refs, moment))
    c = _counted(views).subquery("flow_edges").c
    return fold(c, func.sum(c.connections), func.min(c.since), bindparam("last_moment", moment, type_=DateTime))


def _counted(views: CTE) -> Any:
    """The flows that count each connection once: every calling flow (with what the served side says of its own
    host and process), and the served flows no calling flow in the fleet accounts for."""
    v = views.c
    keys = [v[name] for name in KEYS]
    served = select_(*keys, func.max(v.server_process).label("process"), func.max(v.server_ref).label("ref"))
    serving = served.where(v.served).group_by(*keys).subquery("serving")
    calling = select_(*keys).where(not_(v.served)).group_by(*keys).subquery("calling")
    head = (v.proto, v.client_ref, v.c_addr, v.client_process)
    tail = (v.s_addr, v.s_port)
    counts = (v.connections, v.since, v.evidence)
    # The served side's own host wins over the holder of its address (two hosts may hold one).
    server_ref = func.coalesce(serving.c.ref, v.server_ref).label("server_ref")
    server_process = func.coalesce(serving.c.process, v.server_process).label("server_process")
    clients = select_(*head, server_ref, *tail, server_process, *counts).select_from(
        views.outerjoin(serving, _same(serving, v))
    )
    servers = select_(*head, v.server_ref, *tail, v.server_process, *counts).select_from(
        views.outerjoin(calling, _same(calling, v))
    )
    return clients.where(not_(v.served)).union_all(servers.where(v.served, calling.c.proto.is_(None)))


# Columns of a flow with its far end, carried through the judging, and each view's (served, calling) pair.
CARRIED = (
    "proto",
    "host_ref",
    "peer_ref",
    "process",
    "local_port",
    "remote_port",
    "laddr",
    "raddr",
    "connections",
    "since",
)
SIDES = {
    "c_addr": ("raddr", "laddr"),
    "s_addr": ("laddr", "raddr"),
    "s_port": ("local_port", "remote_port"),
    "client_ref": ("peer_ref", "host_ref"),
    "server_ref": ("host_ref", "peer_ref"),
}


def _judged(alive: CTE, conditions: list[ColumnElement[bool]], refs: list[int], moment: datetime) -> Subquery:
    """Each flow with its far end, the listeners found at either end, and which end serves.

    Each end looks for a listener on its exact address and for those on 0.0.0.0 or :: (one row per port), each
    joined on its own on plain columns, so that no flow is counted twice and every join can be hashed; any of
    them is evidence, the exact one names the process first.
    """
    ends = with_peers(alive, refs, moment).cte("flow_ends").prefix_with("MATERIALIZED")
    e = ends.c
    on_address = listeners(conditions)
    on_wildcard = wildcard_listeners(on_address)
    joins: Any = ends
    holders: dict[str, list[Any]] = {"local": [], "remote": []}
    for side, (ref, netns, port, address) in zip(("local", "remote"), ends_of(e), strict=True):
        exact, wildcard = on_address.alias(f"{side}_listener"), on_wildcard.alias(f"{side}_wildcard_listener")
        joins = joins.outerjoin(exact, on_listener(exact, e, ref, netns, port, address))
        joins = joins.outerjoin(wildcard, on_listener(wildcard, e, ref, netns, port))
        holders[side] = [exact.c, wildcard.c]
    local, remote = (or_(*(c.host_ref.is_not(None) for c in holders[side])) for side in ("local", "remote"))
    server_side, evidence = rules.serving_sql(local, remote, e.local_port, e.remote_port, e.role)
    processes = (func.coalesce(*(c.process for c in holders[side])).label(f"{side}_process") for side in holders)
    judgement = (server_side.label("server_side"), evidence.label("evidence"))
    return select_(*(e[n] for n in CARRIED), *processes, *judgement).select_from(joins).subquery("flows_judged")


def _views(judged: Subquery) -> CTE:
    """Each judged flow as client and server: addresses, server port, hosts and processes."""
    j = judged.c
    served = j.server_side == 1
    side = sided(served)
    sides = (side(j[server], j[client]).label(name) for name, (server, client) in SIDES.items())
    client_process = side(null(), j.process).label("client_process")
    server_process = side(func.coalesce(j.local_process, j.process), j.remote_process).label("server_process")
    columns = (j.proto, served.label("served"), *sides, client_process, server_process, j.connections, j.since)
    return select_(*columns, j.evidence).cte("flow_views").prefix_with("MATERIALIZED")


def _same(other: Any, v: Any) -> ColumnElement[bool]:
    return and_(*(other.c[name] == v[name] for name in KEYS))
