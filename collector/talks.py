"""Who talks to whom: connections folded into edges between processes on hosts.

An open inet socket with a peer (TCP in any state but TIME_WAIT, or connected
UDP) on host A with remote R:P is one end of a connection.  R is resolved to the
fleet host that held R at that moment (loopback stays on A); addresses no host
held are external endpoints.  The server is the side with evidence: a listener
on the local port (the socket was accepted) or a listener on R:P at the remote
host (exact address or wildcard, same namespace).  Only without such evidence
does a heuristic decide: a port in the ephemeral range (32768-60999) is the
client's; otherwise the lower port is the server's.  Each edge says how its
direction was decided.

A connection seen from both ends counts once.  Client ports are folded away: one
edge per (proto, client host, client process, server host, server address and
port, server process), with the number of connections and when they were first
and last seen.  Connected Unix sockets pair processes on one host: the side
bound to a path (the accepted socket) is the server, and the path is the
server address.  A pair whose two ends belong to one process is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    DateTime,
    Select,
    String,
    Subquery,
    Table,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    union_all,
)

from sockfleet.collector import rules, spans
from sockfleet.collector.queries import observed
from sockfleet.collector.rules import DIRECTIONS, UNIX_PAIR, UNIX_PATH, WILDCARDS
from sockfleet.collector.schema import flows, host_addresses, hosts, sockets
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
    "first_seen",
    "last_seen",
    "direction",
)


@dataclass(frozen=True, slots=True)
class Window:
    """The sockets alive at ``start`` (``end`` None), or at any time within [start, end]; now if start is None."""

    start: datetime | None
    end: datetime | None = None

    @property
    def since(self) -> datetime | None:
        """Where a window starts; None for a moment, which is not a window."""
        return self.start if self.end is not None else None


def edges(conn: Connection, window: Window, host: str | None = None, port: int | None = None) -> list[dict[str, Any]]:
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
        narrow = Narrow(mine, _addresses(conn, mine, moment), port)
    out = []
    every_host = len(refs) == len(names)
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        # The planner cannot estimate how many rows "alive at T" keeps, and a guess of one row makes it pair
        # sockets in nested loops; hash joins are right for every size here.
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        # Grouping half a million sockets by connection is done in memory, by hashing, not by sorting.
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    try:
        query = _query if window.end is not None else _at
        rows = conn.execute(query(window, sorted(refs), every_host, moment, narrow)).all()
    finally:
        if postgres:
            conn.exec_driver_sql("RESET enable_nestloop")
            conn.exec_driver_sql("RESET work_mem")
    for row in rows:
        edge = dict(row._mapping)
        # An edge was last seen by the last scan of its hosts that saw it open: not later than the last
        # message of either of them (a host that went silent does not keep its connections alive).
        scans = [seen.last[ref] for ref in (edge["client_ref"], edge["server_ref"]) if ref in seen.last]
        if scans and edge["last_seen"] is not None:
            edge["last_seen"] = min(edge["last_seen"], max(scans))
        edge["client_host"] = names.get(edge.pop("client_ref"))
        edge["server_host"] = names.get(edge.pop("server_ref"))
        edge["direction"] = DIRECTIONS[edge.pop("evidence")]
        if host is not None and host not in (edge["client_host"], edge["server_host"]):
            continue
        if port is not None and edge["server_port"] != port:
            continue
        out.append({name: edge[name] for name in EDGE_FIELDS})
    return sorted(
        out,
        key=lambda e: (
            e["server_host"] or "~",
            e["server_port"] or 0,
            e["client_host"] or "~",
            e["client_process"] or "",
            e["proto"],
        ),
    )


@dataclass(frozen=True, slots=True)
class Narrow:
    """Which sockets can make the edges asked for: those of some hosts (or calling their addresses), and
    those on a port at either end.  None: no limit."""

    refs: list[int] | None = None
    addresses: list[str] | None = None
    port: int | None = None

    def inet(self, table: Table = sockets) -> list[ColumnElement[bool]]:
        """For inet socket rows, or (``table`` flows) for flow rows, which have the same endpoint columns."""
        c = table.c
        conditions = []
        if self.refs is not None:
            conditions.append(or_(c.host_ref.in_(self.refs), c.remote_address.in_(self.addresses or [])))
        if self.port is not None:
            conditions.append(or_(c.local_port == self.port, c.remote_port == self.port))
        return conditions

    def unix(self) -> list[ColumnElement[bool]]:
        if self.port is not None:
            return [literal(False)]  # a Unix edge has no server port
        return [sockets.c.host_ref.in_(self.refs)] if self.refs is not None else []


def _addresses(conn: Connection, refs: list[int], moment: datetime) -> list[str]:
    """The addresses these hosts held at the moment, as a socket may name them (a v4 one also v4-mapped)."""
    ha = host_addresses.c
    held = conn.execute(
        select(ha.address).where(
            ha.host_ref.in_(refs), ha.valid_from <= moment, or_(ha.valid_to.is_(None), ha.valid_to > moment)
        )
    ).scalars()
    out = set()
    for address in held:
        out.add(address)
        if "." in address:
            out.add(f"::ffff:{address}")
    return sorted(out)


def _query(window: Window, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow) -> Select[Any]:
    at = bindparam("moment", moment, type_=DateTime)
    s = sockets.c
    conditions = [spans.alive(window.start, window.end)]
    if not every_host:
        conditions.append(s.host_ref.in_(refs))
    inet = select(
        s.host_ref,
        s.netns,
        s.proto,
        s.process,
        s.local_port,
        s.remote_port,
        s.valid_from,
        func.coalesce(s.valid_to, at).label("last"),
        rules.plain_sql(s.local_address).label("laddr"),
        rules.plain_sql(s.remote_address).label("raddr"),
    ).where(*conditions, *narrow.inet(), rules.connected_sql(s))
    return union_all(
        _inet_edges(
            inet.subquery("inet"),
            _listening(window, refs, every_host),
            refs,  # type: ignore[return-value]
            moment,
        ),
        _unix_edges(_unix(window, refs, every_host, moment, narrow)),
    )


def _unix(window: Window, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow) -> CTE:
    """Connected Unix sockets alive in the window, through their own partial index."""
    s = sockets.c
    # As the partial index ix_sockets_unix is written, for SQLite to see that it applies.
    conditions = [spans.alive(window.start, window.end, within=(s.proto == literal_column("'unix'"),))]
    if not every_host:
        conditions.append(s.host_ref.in_(refs))
    return (
        select(
            s.host_ref,
            s.process,
            s.pid,
            s.path,
            s.inode,
            s.peer_inode,
            s.valid_from,
            func.coalesce(s.valid_to, bindparam("moment", moment, type_=DateTime)).label("last"),
        )
        .where(*conditions, *narrow.unix(), s.peer_inode.is_not(None), s.peer_inode != 0)
        .cte("unix")
    )


def _at(window: Window, refs: list[int], every_host: bool, moment: datetime, narrow: Narrow) -> Select[Any]:
    """Edges at one moment (or now), from the flows the store folded connected sockets into."""
    f = flows.c
    conditions = [spans.alive(window.start, table=flows)]
    if not every_host:
        conditions.append(f.host_ref.in_(refs))
    alive = (
        select(
            f.host_ref,
            f.netns,
            f.proto,
            f.role,
            f.process,
            f.local_port,
            f.remote_port,
            f.connections,
            f.since,
            f.local_address.label("laddr"),
            f.remote_address.label("raddr"),
        )
        .where(*conditions, *narrow.inet(flows))
        .cte("alive_flows")
        .prefix_with("MATERIALIZED")
    )
    return union_all(
        _flow_edges(alive, _listening(window, refs, every_host), refs, moment),  # type: ignore[return-value]
        _unix_edges(_unix(window, refs, every_host, moment, narrow)),
    )


def _listening(window: Window, refs: list[int], every_host: bool) -> list[ColumnElement[bool]]:
    """Listener rows alive in the window, through the listeners' partial indexes."""
    conditions = [spans.alive(window.start, window.end, within=(rules.waiting_sql(sockets.c),))]
    if not every_host:
        conditions.append(sockets.c.host_ref.in_(refs))
    return conditions


def _listeners(conditions: list[ColumnElement[bool]]) -> CTE:
    """Listeners (TCP LISTEN, unconnected UDP) by host, namespace, protocol, port and address.

    Read from the table (through the listeners' own index) rather than from the sockets already read,
    so that the planner knows how many there are.
    """
    s = sockets.c
    laddr = rules.plain_sql(s.local_address)
    listening = (
        select(s.host_ref, s.netns, s.proto, s.local_port, laddr.label("laddr"), s.process)
        .where(*conditions, rules.accepts_sql(s))
        .subquery("listening")
    )
    c = listening.c
    keys = (c.host_ref, c.netns, c.proto, c.local_port, c.laddr)
    return select(*keys, func.min(c.process).label("process")).group_by(*keys).cte("listeners")


def _holders(refs: list[int], moment: datetime) -> CTE:
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
    first = select(holding.c.address, func.min(holding.c.host_ref).label("host_ref")).group_by(holding.c.address)
    first_cte = first.cte("first_holder")
    return (
        select(first_cte.c.address, first_cte.c.host_ref, func.min(holding.c.netns).label("netns"))
        .select_from(
            first_cte.join(
                holding, and_(holding.c.address == first_cte.c.address, holding.c.host_ref == first_cte.c.host_ref)
            )
        )
        .group_by(first_cte.c.address, first_cte.c.host_ref)
        .cte("held")
    )


def _with_peers(alive: Subquery | CTE, refs: list[int], moment: datetime, name: str) -> Subquery:
    """Rows with a far end (``raddr``), and the fleet host and namespace holding it (loopback: their own)."""
    a = alive.c
    held = _holders(refs, moment)
    loop = rules.loopback_sql(a.raddr)
    return (
        select(
            alive,
            case((loop, a.host_ref), else_=held.c.host_ref).label("peer_ref"),
            case((loop, a.netns), else_=held.c.netns).label("peer_netns"),
        )
        .select_from(alive.outerjoin(held, held.c.address == a.raddr))
        .subquery(name)
    )


def _flow_edges(alive: CTE, conditions: list[ColumnElement[bool]], refs: list[int], moment: datetime) -> Select[Any]:
    """Flows judged as ``_inet_edges`` judges sockets, then folded: the calling side's flows count the
    connections, and a served flow counts only those no calling flow in the fleet accounts for."""
    ends = _with_peers(alive, refs, moment, "flow_ends")
    e = ends.c
    listeners = _listeners(conditions)
    # A listener on the exact address, on 0.0.0.0 or on ::, each joined on its own, so that no flow is
    # counted twice; any of them is evidence, the exact one names the process first.
    joins: Any = ends
    found: dict[str, list[Any]] = {"local": [], "remote": []}
    for side_name, ref, netns, port, address in (
        ("local", e.host_ref, e.netns, e.local_port, e.laddr),
        ("remote", e.peer_ref, e.peer_netns, e.remote_port, e.raddr),
    ):
        for n, wanted in enumerate((address, *(literal(w) for w in WILDCARDS))):
            lst = listeners.alias(f"{side_name}_listener{n}")
            joins = joins.outerjoin(
                lst,
                and_(
                    lst.c.host_ref == ref,
                    lst.c.netns == netns,
                    lst.c.proto == e.proto,
                    lst.c.local_port == port,
                    lst.c.laddr == wanted,
                ),
            )
            found[side_name].append(lst.c)
    local_listens = or_(*(c.host_ref.is_not(None) for c in found["local"]))
    remote_listens = or_(*(c.host_ref.is_not(None) for c in found["remote"]))
    local_process = func.coalesce(*(c.process for c in found["local"]))
    remote_process = func.coalesce(*(c.process for c in found["remote"]))
    server_side, evidence = rules.serving_sql(local_listens, remote_listens, e.local_port, e.remote_port, e.role)
    judged = (
        select(
            e.proto,
            e.host_ref,
            e.peer_ref,
            e.process,
            e.local_port,
            e.remote_port,
            e.laddr,
            e.raddr,
            e.connections,
            e.since,
            local_process.label("local_process"),
            remote_process.label("remote_process"),
            server_side.label("server_side"),
            evidence.label("evidence"),
        )
        .select_from(joins)
        .subquery("flows_judged")
    )
    j = judged.c
    served = j.server_side == 1

    def side(server: Any, client: Any) -> ColumnElement[Any]:
        return case((served, server), else_=client)

    views = (
        select(
            j.proto,
            served.label("served"),
            side(j.raddr, j.laddr).label("c_addr"),
            side(j.laddr, j.raddr).label("s_addr"),
            side(j.local_port, j.remote_port).label("s_port"),
            side(j.peer_ref, j.host_ref).label("client_ref"),
            side(null(), j.process).label("client_process"),
            side(j.host_ref, j.peer_ref).label("server_ref"),
            side(func.coalesce(j.local_process, j.process), j.remote_process).label("server_process"),
            j.connections,
            j.since,
            j.evidence,
        )
        .cte("flow_views")
        .prefix_with("MATERIALIZED")
    )
    v = views.c
    keys = (v.proto, v.c_addr, v.s_addr, v.s_port)
    # What the served side says of its own process, per connection endpoints (client port folded).
    serving = (
        select(*keys, func.max(v.server_process).label("process"), func.max(v.server_ref).label("ref"))
        .where(v.served)
        .group_by(*keys)
        .subquery("serving")
    )
    calling = select(*keys).where(not_(v.served)).group_by(*keys).subquery("calling")

    def same(other: Any) -> ColumnElement[bool]:
        return and_(
            other.c.proto == v.proto, other.c.c_addr == v.c_addr, other.c.s_addr == v.s_addr, other.c.s_port == v.s_port
        )

    columns = (v.proto, v.client_ref, v.c_addr, v.client_process)
    from_clients = (
        # The served side's own host wins over the holder of its address (two hosts may hold one).
        select(
            *columns,
            func.coalesce(serving.c.ref, v.server_ref).label("server_ref"),
            v.s_addr,
            v.s_port,
            func.coalesce(serving.c.process, v.server_process).label("server_process"),
            v.connections,
            v.since,
            v.evidence,
        )
        .select_from(views.outerjoin(serving, same(serving)))
        .where(not_(v.served))
    )
    from_servers = (
        select(*columns, v.server_ref, v.s_addr, v.s_port, v.server_process, v.connections, v.since, v.evidence)
        .select_from(views.outerjoin(calling, same(calling)))
        .where(v.served, calling.c.proto.is_(None))
    )
    both = union_all(from_clients, from_servers).subquery("flow_edges")
    c = both.c
    client_address = case((c.client_ref.is_(None), c.c_addr), else_=null())
    outside_server = case((c.server_ref.is_(None), c.s_addr), else_=null())
    return select(
        c.proto,
        c.client_ref,
        client_address.label("client_address"),
        c.client_process,
        c.server_ref,
        func.min(c.s_addr).label("server_address"),
        c.s_port.label("server_port"),
        c.server_process,
        func.sum(c.connections).label("connections"),
        func.min(c.since).label("first_seen"),
        bindparam("last_moment", moment, type_=DateTime).label("last_seen"),
        func.max(c.evidence).label("evidence"),
    ).group_by(
        c.proto,
        c.client_ref,
        client_address,
        c.client_process,
        c.server_ref,
        outside_server,
        c.s_port,
        c.server_process,
    )


def _inet_edges(
    alive: Subquery, conditions: list[ColumnElement[bool]], refs: list[int], moment: datetime
) -> Select[Any]:
    # Each connected socket, with the host that holds its remote address (loopback: its own host).
    ends = _with_peers(alive, refs, moment, "ends")
    listeners = _listeners(conditions)
    e = ends.c
    local, remote = listeners.alias("local_listener"), listeners.alias("remote_listener")

    def on(listener: Any, ref: Any, netns: Any, port: Any, address: Any) -> ColumnElement[bool]:
        # Exactly on the address, or on a wildcard.  A socket may find two listeners (one of each): the
        # copies meet again in the grouping by connection below, and count once.
        return and_(
            listener.c.host_ref == ref,
            listener.c.netns == netns,
            listener.c.proto == e.proto,
            listener.c.local_port == port,
            or_(listener.c.laddr == address, listener.c.laddr.in_(WILDCARDS)),
        )

    local_listens = local.c.host_ref.is_not(None)
    remote_listens = remote.c.host_ref.is_not(None)
    server_side, evidence = rules.serving_sql(local_listens, remote_listens, e.local_port, e.remote_port)
    judged = (
        select(
            e.proto,
            e.host_ref,
            e.peer_ref,
            e.process,
            e.local_port,
            e.remote_port,
            e.laddr,
            e.raddr,
            e.valid_from,
            e.last,
            local.c.process.label("local_process"),
            remote.c.process.label("remote_process"),
            server_side.label("server_side"),
            evidence.label("evidence"),
        )
        .select_from(
            ends.outerjoin(local, on(local, e.host_ref, e.netns, e.local_port, e.laddr)).outerjoin(
                remote, on(remote, e.peer_ref, e.peer_netns, e.remote_port, e.raddr)
            )
        )
        .subquery("judged")
    )
    j = judged.c
    served = j.server_side == 1

    def side(server: Any, client: Any) -> ColumnElement[Any]:
        return case((served, server), else_=client)

    # Both ends of a connection meet here (client ports are still apart); the server's own view of its
    # process wins over what the client's end inferred from the listener.
    connections = (
        select(
            j.proto,
            side(j.raddr, j.laddr).label("c_addr"),
            side(j.remote_port, j.local_port).label("c_port"),
            side(j.laddr, j.raddr).label("s_addr"),
            side(j.local_port, j.remote_port).label("s_port"),
            func.max(side(j.peer_ref, j.host_ref)).label("client_ref"),
            func.max(side(null(), j.process)).label("client_process"),
            func.max(side(j.host_ref, j.peer_ref)).label("server_ref"),
            func.coalesce(
                func.max(side(func.coalesce(j.local_process, j.process), null())), func.max(j.remote_process)
            ).label("server_process"),
            func.max(j.evidence).label("evidence"),
            func.min(j.valid_from).label("first_seen"),
            func.max(j.last).label("last_seen"),
        )
        .group_by(
            j.proto,
            side(j.raddr, j.laddr),
            side(j.remote_port, j.local_port),
            side(j.laddr, j.raddr),
            side(j.local_port, j.remote_port),
        )
        .cte("connections")
    )
    c = connections.c
    client_address = case((c.client_ref.is_(None), c.c_addr), else_=null())
    outside_server = case((c.server_ref.is_(None), c.s_addr), else_=null())
    return select(
        c.proto,
        c.client_ref,
        client_address.label("client_address"),
        c.client_process,
        c.server_ref,
        func.min(c.s_addr).label("server_address"),
        c.s_port.label("server_port"),
        c.server_process,
        func.count().label("connections"),
        func.min(c.first_seen).label("first_seen"),
        func.max(c.last_seen).label("last_seen"),
        func.max(c.evidence).label("evidence"),
    ).group_by(
        c.proto,
        c.client_ref,
        client_address,
        c.client_process,
        c.server_ref,
        outside_server,
        c.s_port,
        c.server_process,
    )


def _unix_edges(alive: CTE) -> Select[Any]:
    """Connected Unix sockets paired by inode on one host: the end bound to a path serves, else the lower pid."""
    u, v = alive.alias("u"), alive.alias("v")
    paired = and_(v.c.host_ref == u.c.host_ref, v.c.inode == u.c.peer_inode, v.c.peer_inode == u.c.inode)
    same_kind = (u.c.path.is_(None)) == (v.c.path.is_(None))
    u_serves = or_(
        and_(u.c.path.is_not(None), v.c.path.is_(None)),
        and_(
            same_kind,
            or_(
                func.coalesce(u.c.pid, 0) < func.coalesce(v.c.pid, 0),
                and_(func.coalesce(u.c.pid, 0) == func.coalesce(v.c.pid, 0), u.c.inode < v.c.inode),
            ),
        ),
    )
    direction = case((same_kind, UNIX_PAIR), else_=UNIX_PATH)
    # A socket seen in several rows over a window is one pair.
    pairs = (
        select(
            u.c.host_ref,
            func.max(u.c.path).label("path"),
            func.max(u.c.process).label("server_process"),
            func.max(v.c.process).label("client_process"),
            func.max(direction).label("evidence"),
            func.min(u.c.valid_from).label("u_first"),
            func.min(v.c.valid_from).label("v_first"),
            func.max(u.c.last).label("u_last"),
            func.max(v.c.last).label("v_last"),
        )
        .select_from(u.join(v, paired))
        .where(u_serves, not_(and_(u.c.pid.is_not(None), u.c.pid == v.c.pid)))
        .group_by(u.c.host_ref, u.c.inode, v.c.inode)
        .cte("pairs")
    )
    p = pairs.c
    first = case((p.u_first < p.v_first, p.u_first), else_=p.v_first)
    last = case((p.u_last > p.v_last, p.u_last), else_=p.v_last)
    return select(
        literal("unix").label("proto"),
        p.host_ref.label("client_ref"),
        null().label("client_address"),
        p.client_process,
        p.host_ref.label("server_ref"),
        func.min(p.path).label("server_address"),
        null().label("server_port"),
        p.server_process,
        func.count().label("connections"),
        func.min(first).label("first_seen"),
        func.max(last).label("last_seen"),
        p.evidence,
    ).group_by(p.host_ref, p.client_process, p.path, p.server_process, p.evidence)
