"""The far end of each connection and the listeners on either end: what decides who serves.

A connection's far end (``raddr``) is resolved to the fleet host that held the address at the moment
(loopback: the socket's own host); a listener on the local port (the socket was accepted), or on the
remote address and port at the far host (exact address or wildcard, same namespace), is the evidence
of which end serves (``rules.serving_sql``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, Select, String, Subquery, and_, case, cast, func, not_, or_, select

from sockfleet.collector import rules, spans
from sockfleet.collector.schema import host_addresses, sockets
from sockfleet.collector.talks.narrow import not_ended
from sockfleet.connections import WILDCARDS


def listener_rows(start: datetime | None, end: datetime | None, refs: list[int], every_host: bool) -> list[Any]:
    """Conditions for the listener rows alive at ``start`` (or within [start, end]), through their partial indexes."""
    conditions = [spans.alive(start, end, within=(rules.waiting_sql(sockets.c),)), *not_ended(start)]
    if not every_host:
        conditions.append(sockets.c.host_ref.in_(refs))
    return conditions


def listeners(conditions: list[ColumnElement[bool]]) -> CTE:
    """Listeners (TCP LISTEN, unconnected UDP) by host, namespace, protocol, port and address.

    Read from the table (through the listeners' own index) rather than from the sockets already read,
    so that the planner knows how many there are.
    """
    s = sockets.c
    listening = (
        select(s.host_ref, s.netns, s.proto, s.local_port, rules.plain_sql(s.local_address).label("laddr"), s.process)
        .where(*conditions, rules.accepts_sql(s))
        .subquery("listening")
    )
    c = listening.c
    keys = (c.host_ref, c.netns, c.proto, c.local_port, c.laddr)
    return select(*keys, func.min(c.process).label("process")).group_by(*keys).cte("listeners")


def wildcard_listeners(found: CTE) -> CTE:
    """The listeners of ``found`` on 0.0.0.0 or ::, one row per host, namespace, protocol and port, with the
    process of the one on 0.0.0.0 first.

    A row's end finds them by one join on plain equalities, whatever its own address: a join PostgreSQL can hash
    (``db.large_joins`` leaves it nothing else), however few listeners it guesses are open (a few dozen of the
    10,000 a large fleet keeps open).
    """
    c = found.c
    keys = (c.host_ref, c.netns, c.proto, c.local_port)
    processes = (func.min(case((c.laddr == wildcard, c.process))) for wildcard in WILDCARDS)
    any_address = select(*keys, func.coalesce(*processes).label("process")).where(c.laddr.in_(WILDCARDS))
    return any_address.group_by(*keys).cte("wildcard_listeners")


def holders(refs: list[int], moment: datetime) -> CTE:
    """The fleet host holding each address at the moment (two hosts may hold one, e.g. docker0: the first)."""
    ha = host_addresses.c
    # Cast: an expression has no type affinity in SQLite, and then cannot be looked up by an index.
    address = cast(rules.plain_sql(ha.address), String)
    holding = (
        select(address.label("address"), ha.host_ref, ha.netns)
        .where(
            ha.valid_from <= moment,
            or_(ha.valid_to.is_(None), ha.valid_to > moment),
            ha.host_ref.in_(refs),
            not_(rules.loopback_sql(address)),
        )
        .cte("holding")
    )
    h = holding.c
    first = select(h.address, func.min(h.host_ref).label("host_ref")).group_by(h.address).cte("first_holder")
    f = first.c
    return (
        select(f.address, f.host_ref, func.min(h.netns).label("netns"))
        .select_from(first.join(holding, and_(h.address == f.address, h.host_ref == f.host_ref)))
        .group_by(f.address, f.host_ref)
        .cte("held")
    )


def with_peers(alive: Subquery | CTE, refs: list[int], moment: datetime) -> Select[Any]:
    """Rows with a far end (``raddr``), and the fleet host and namespace holding it (loopback: their own)."""
    a = alive.c
    held = holders(refs, moment)
    loop = rules.loopback_sql(a.raddr)
    return select(
        alive,
        case((loop, a.host_ref), else_=held.c.host_ref).label("peer_ref"),
        case((loop, a.netns), else_=held.c.netns).label("peer_netns"),
    ).select_from(alive.outerjoin(held, held.c.address == a.raddr))


def on_listener(listener: Any, e: Any, ref: Any, netns: Any, port: Any, address: Any = None) -> ColumnElement[bool]:
    """``listener`` holds (ref, netns, the row's protocol, port), on ``address`` if one is given (a column)."""
    same = [
        listener.c.host_ref == ref,
        listener.c.netns == netns,
        listener.c.proto == e.proto,
        listener.c.local_port == port,
    ]
    if address is not None:
        same.append(listener.c.laddr == address)
    return and_(*same)


def ends_of(e: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(host, namespace, port, address) of the local and the far end of each row of ``e``."""
    return (e.host_ref, e.netns, e.local_port, e.laddr), (e.peer_ref, e.peer_netns, e.remote_port, e.raddr)
