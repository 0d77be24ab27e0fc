"""Connections that closed between two scans (``closed_flows``, from the agents' socket-destroy events), added to
the edges of a window: the short-lived ones no scan saw, and the bytes each side sent.

Each stored row is one end's view of a flow: ``s`` (it served: its host, address, port and process are the
server's; the peer is the client), ``c`` (it called: its host and process are the client's; the peer is
the server), ``n`` (both ports kept: the lower port serves, unless only the other is ephemeral).  The peer
is resolved to the fleet host that held its address in the window (loopback stays on the host).

A connection seen from both ends (agents on both hosts) is counted once: for each connection key (proto,
client host or address, server host or address, server port) the side that counted more connections
gives the counts and the bytes, and the other side lends the process it knows (the client's view knows
the client's process, the server's view the server's).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from sockfleet.collector import rules
from sockfleet.collector.schema import closed_flows, host_addresses
from sockfleet.collector.talks.narrow import Narrow
from sockfleet.connections import CALLING, SERVED, ephemeral, plain


@dataclass(slots=True)
class Closing:
    """One end's view of closed connections, turned into an edge's terms."""

    proto: str
    client_ref: int | None
    client_address: str | None
    client_process: str | None
    server_ref: int | None
    server_address: str
    server_port: int
    server_process: str | None
    connections: int
    short_lived: int
    client_bytes: int | None
    server_bytes: int | None
    first_seen: datetime
    last_seen: datetime
    server_view: bool
    direction: str

    def key(self) -> tuple[Any, ...]:
        client = ("host", self.client_ref) if self.client_ref is not None else ("address", self.client_address)
        server = ("host", self.server_ref) if self.server_ref is not None else ("address", self.server_address)
        return (self.proto, client, server, self.server_port)


def closings(conn: Connection, start: datetime, end: datetime, refs: list[int], narrow: Narrow) -> list[Closing]:
    """Every end's view of connections that closed in [start, end] on the hosts ``refs``, one per process."""
    c = closed_flows.c
    query = select(closed_flows).where(c.host_ref.in_(refs), c.last_at >= start, c.first_at <= end)
    if narrow.port is not None:
        query = query.where(or_(c.local_port == narrow.port, c.remote_port == narrow.port))
    rows = conn.execute(query).all()
    if not rows:
        return []
    holder = _holders(conn, refs, start, end)
    return [_closing(row._mapping, holder) for row in rows]


def _holders(conn: Connection, refs: list[int], start: datetime, end: datetime) -> dict[str, int]:
    """The fleet host that held each address at some time in the window (the first, as ``talks`` resolves)."""
    ha = host_addresses.c
    rows = conn.execute(
        select(ha.address, ha.host_ref)
        .where(ha.host_ref.in_(refs), ha.valid_from <= end, or_(ha.valid_to.is_(None), ha.valid_to > start))
        .order_by(ha.host_ref)
    ).all()
    held: dict[str, int] = {}
    for address, ref in rows:
        plain_address = plain(address) or ""
        if not rules.loopback(plain_address):
            held.setdefault(plain_address, ref)
    return held


def _closing(row: Any, holder: dict[str, int]) -> Closing:
    ref, remote = row["host_ref"], row["remote_address"]
    peer = ref if rules.loopback(remote) else holder.get(remote)
    serves, direction = _serves(row["role"], row["local_port"], row["remote_port"])
    sent, received = row["sent_bytes"], row["received_bytes"]
    times = (row["first_at"], row["last_at"])
    counts = (row["connections"], row["short_lived"])
    if serves:
        return Closing(
            row["proto"], peer, None if peer is not None else remote, None,
            ref, row["local_address"], row["local_port"], row["process"],
            *counts, received, sent, *times, server_view=True, direction=direction,
        )  # fmt: skip
    return Closing(
        row["proto"], ref, None, row["process"],
        peer, remote, row["remote_port"], None,
        *counts, sent, received, *times, server_view=False, direction=direction,
    )  # fmt: skip


def _serves(role: str, local_port: int | None, remote_port: int | None) -> tuple[bool, str]:
    """Whether the reporting end served, and how that was decided: by its role (a listener, or its own port
    ephemeral and the peer's not), else as ``talks`` decides without a listener."""
    if role == SERVED:
        return True, rules.DIRECTIONS[rules.LISTENER]
    if role == CALLING:
        return False, rules.DIRECTIONS[rules.EPHEMERAL_PORT]
    if ephemeral(local_port) != ephemeral(remote_port):
        return not ephemeral(local_port), rules.DIRECTIONS[rules.EPHEMERAL_PORT]
    return (local_port or 0) < (remote_port or 0), rules.DIRECTIONS[rules.LOWER_PORT]


def merged(found: list[Closing]) -> list[Closing]:
    """One view per connection key and process: where both ends reported, the side that counted more wins, and
    each side lends the process only it knows."""
    by_key: dict[tuple[Any, ...], list[Closing]] = defaultdict(list)
    for closing in found:
        by_key[closing.key()].append(closing)
    out: list[Closing] = []
    for views in by_key.values():
        servers = _by_process([v for v in views if v.server_view], "server_process")
        clients = _by_process([v for v in views if not v.server_view], "client_process")
        served, called = sum(v.connections for v in servers), sum(v.connections for v in clients)
        if clients and called >= served:
            server_process = servers[0].server_process if len(servers) == 1 else None
            for view in clients:
                view.server_process = view.server_process or server_process
            out += clients
        else:
            client_process = clients[0].client_process if len(clients) == 1 else None
            for view in servers:
                view.client_process = view.client_process or client_process
            out += servers
    return out


def _by_process(views: list[Closing], process: str) -> list[Closing]:
    """One side's views summed per process of that side."""
    groups: dict[str | None, list[Closing]] = defaultdict(list)
    for view in views:
        groups[getattr(view, process)].append(view)
    return [total for group in groups.values() if (total := _summed(group)) is not None]


def _summed(views: list[Closing]) -> Closing | None:
    """One side's views of a connection key as one (processes of one side seldom differ: the first is kept)."""
    if not views:
        return None
    total = views[0]
    for view in views[1:]:
        total.connections += view.connections
        total.short_lived += view.short_lived
        total.client_bytes = _add(total.client_bytes, view.client_bytes)
        total.server_bytes = _add(total.server_bytes, view.server_bytes)
        total.first_seen, total.last_seen = min(total.first_seen, view.first_seen), max(total.last_seen, view.last_seen)
    return total


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b
