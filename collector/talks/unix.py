"""Connected Unix sockets paired by inode on one host: the end bound to a path serves (its path is the server
address), else the lower pid; a pair whose two ends belong to one process is left out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CTE, DateTime, Select, and_, bindparam, case, func, literal, literal_column, not_, null, or_
from sqlalchemy import select as select_

from sockfleet.collector import spans
from sockfleet.collector.rules import UNIX_PAIR, UNIX_PATH
from sockfleet.collector.schema import sockets
from sockfleet.collector.talks.fold import edge_row
from sockfleet.collector.talks.narrow import Narrow, not_ended


def connected(
    start: datetime | None, end: datetime | None, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow
) -> CTE:
    """Connected Unix sockets alive at ``start`` (or within [start, end]), through their own partial index."""
    s = sockets.c
    # As the partial index ix_sockets_unix is written, for SQLite to see that it applies.
    conditions = [spans.alive(start, end, within=(s.proto == literal_column("'unix'"),)), *not_ended(start)]
    if not every_host:
        conditions.append(s.host_ref.in_(refs))
    last = func.coalesce(s.valid_to, bindparam("moment", moment, type_=DateTime)).label("last")
    kept = (s.host_ref, s.process, s.pid, s.path, s.inode, s.peer_inode, s.valid_from)
    paired = (s.peer_inode.is_not(None), s.peer_inode != 0)
    return select_(*kept, last).where(*conditions, *narrow.unix(), *paired).cte("unix")


def unix_edges(alive: CTE) -> Select[Any]:
    p = _pairs(alive).c
    first = case((p.u_first < p.v_first, p.u_first), else_=p.v_first)
    last = case((p.u_last > p.v_last, p.u_last), else_=p.v_last)
    row = edge_row(
        proto=literal("unix"),
        client_ref=p.host_ref,
        client_address=null(),
        client_process=p.client_process,
        server_ref=p.host_ref,
        server_address=func.min(p.path),
        server_port=null(),
        server_process=p.server_process,
        connections=func.count(),
        first_seen=func.min(first),
        last_seen=func.max(last),
        evidence=p.evidence,
    )
    return row.group_by(p.host_ref, p.client_process, p.path, p.server_process, p.evidence)


def _pairs(alive: CTE) -> CTE:
    """Each pair once (a socket seen in several rows over a window is one pair), ``u`` the serving end."""
    u, v = alive.alias("u"), alive.alias("v")
    paired = and_(v.c.host_ref == u.c.host_ref, v.c.inode == u.c.peer_inode, v.c.peer_inode == u.c.inode)
    same_kind = (u.c.path.is_(None)) == (v.c.path.is_(None))
    u_pid, v_pid = func.coalesce(u.c.pid, 0), func.coalesce(v.c.pid, 0)
    lower = or_(u_pid < v_pid, and_(u_pid == v_pid, u.c.inode < v.c.inode))
    u_serves = or_(and_(u.c.path.is_not(None), v.c.path.is_(None)), and_(same_kind, lower))
    one_process = and_(u.c.pid.is_not(None), u.c.pid == v.c.pid)
    columns = (
        u.c.host_ref,
        func.max(u.c.path).label("path"),
        func.max(u.c.process).label("server_process"),
        func.max(v.c.process).label("client_process"),
        func.max(case((same_kind, UNIX_PAIR), else_=UNIX_PATH)).label("evidence"),
        func.min(u.c.valid_from).label("u_first"),
        func.min(v.c.valid_from).label("v_first"),
        func.max(u.c.last).label("u_last"),
        func.max(v.c.last).label("v_last"),
    )
    joined = select_(*columns).select_from(u.join(v, paired)).where(u_serves, not_(one_process))
    return joined.group_by(u.c.host_ref, u.c.inode, v.c.inode).cte("pairs")
