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

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from collector.queries import observed
from collector.schema import host_addresses, hosts, sockets
from collector.times import now

EPHEMERAL = range(32768, 61000)
WILDCARDS = {"0.0.0.0", "::"}
EDGE_FIELDS = ("proto", "client_host", "client_address", "client_process", "server_host", "server_address",
               "server_port", "server_process", "connections", "first_seen", "last_seen", "direction")
COLUMNS = (sockets.c.host_ref, sockets.c.netns, sockets.c.proto, sockets.c.type, sockets.c.state,
           sockets.c.local_address, sockets.c.local_port, sockets.c.remote_address, sockets.c.remote_port,
           sockets.c.path, sockets.c.inode, sockets.c.peer_inode, sockets.c.process, sockets.c.pid,
           sockets.c.valid_from, sockets.c.valid_to)


def plain(address: str | None) -> str | None:
    """``"::ffff:10.0.0.5"`` → ``"10.0.0.5"``: an IPv4 peer of an IPv6 socket is that IPv4 address."""
    if address is not None and address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


@functools.lru_cache(maxsize=65536)
def loopback(address: str) -> bool:
    """Whether ``address`` is a loopback address (cached: a fleet has few distinct peers)."""
    try:
        return ipaddress.ip_address(plain(address) or "").is_loopback
    except ValueError:
        return False


@dataclass
class Edge:
    proto: str
    client_host: str | None
    client_address: str | None
    client_process: str | None
    server_host: str | None
    server_address: str | None
    server_port: int | None
    server_process: str | None
    direction: str
    connections: set[tuple[Any, ...]] = field(default_factory=set)
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EDGE_FIELDS if name != "connections"} | {
            "connections": len(self.connections)}


@dataclass(frozen=True, slots=True)
class Window:
    """The sockets alive at ``start`` (``end`` None), or at any time within [start, end]."""

    start: datetime | None
    end: datetime | None = None

    def alive(self) -> Any:
        if self.start is None:
            return sockets.c.valid_to.is_(None)
        end = self.end or self.start
        return and_(sockets.c.valid_from <= end, or_(sockets.c.valid_to.is_(None), sockets.c.valid_to > self.start))


def edges(conn: Connection, window: Window) -> list[dict[str, Any]]:
    """Every edge alive in ``window`` between hosts observed then (and external endpoints)."""
    seen = observed(conn, window.end or window.start)
    refs = set(seen.known) if window.start is not None else set(seen.known) | set(seen.unknown)
    names = {row.id: row.name for row in conn.execute(select(hosts.c.id, hosts.c.name))}
    moment = window.end or window.start or now()
    holders: dict[str, tuple[int, int]] = {}
    for row in conn.execute(
        select(host_addresses.c.address, host_addresses.c.host_ref, host_addresses.c.netns)
        .where(host_addresses.c.valid_from <= moment,
               or_(host_addresses.c.valid_to.is_(None), host_addresses.c.valid_to > moment))
    ):
        if row.host_ref in refs and not loopback(row.address):
            holders.setdefault(plain(row.address) or "", (row.host_ref, row.netns))
    rows = [r for r in conn.execute(select(*COLUMNS).where(window.alive(), sockets.c.host_ref.in_(refs)))]
    listeners: dict[tuple[int, int, str, int], list[tuple[str | None, str | None]]] = {}
    for r in rows:
        if r.proto != "unix" and (r.state == "LISTEN" or (r.proto == "udp" and r.state == "UNCONN")):
            listeners.setdefault((r.host_ref, r.netns, r.proto, r.local_port), []).append(
                (plain(r.local_address), r.process))
    ends: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if r.proto == "unix" or r.remote_address is None or r.state in ("TIME_WAIT", "LISTEN"):
            continue
        _inet(r, names, holders, listeners, ends, moment)
    folded: dict[tuple[Any, ...], Edge] = {}
    for connection, end in ends.items():
        _fold(folded, connection, end)
    _unix([r for r in rows if r.proto == "unix" and r.peer_inode], names, folded, moment)
    return sorted((edge.row() for edge in folded.values()),
                  key=lambda e: (e["server_host"] or "~", e["server_port"] or 0, e["client_host"] or "~",
                                 e["client_process"] or "", e["proto"]))


def _listening(listeners: dict[tuple[int, int, str, int], list[tuple[str | None, str | None]]],
               host: int | None, netns: int | None, proto: str, address: str | None,
               port: int | None) -> tuple[bool, str | None]:
    """Whether host's namespace listens on address:port (exactly or on a wildcard), and the process."""
    if host is None or port is None:
        return False, None
    for bound, process in listeners.get((host, netns or 0, proto, port), ()):
        if bound == address or bound in WILDCARDS:
            return True, process
    return False, None


def _inet(r: Any, names: dict[int, str], holders: dict[str, tuple[int, int]],
          listeners: dict[tuple[int, int, str, int], list[tuple[str | None, str | None]]],
          ends: dict[tuple[Any, ...], dict[str, Any]], moment: datetime) -> None:
    """Record what this socket tells of its connection: which end it is, its host and process."""
    local, remote = plain(r.local_address), plain(r.remote_address)
    if loopback(remote or ""):
        peer: tuple[int, int] | None = (r.host_ref, r.netns)
    else:
        peer = holders.get(remote or "")
    peer_host, peer_netns = peer if peer else (None, None)
    local_listens, local_process = _listening(listeners, r.host_ref, r.netns, r.proto, local, r.local_port)
    remote_listens, remote_process = _listening(listeners, peer_host, peer_netns, r.proto, remote, r.remote_port)
    if local_listens and not remote_listens:
        server_side, direction = True, "listener"
    elif remote_listens and not local_listens:
        server_side, direction = False, "listener"
    elif (r.local_port in EPHEMERAL) != (r.remote_port in EPHEMERAL):
        server_side, direction = r.remote_port in EPHEMERAL, "ephemeral port"
    else:
        server_side, direction = r.local_port < r.remote_port, "lower port"
    me = names.get(r.host_ref)
    them = names.get(peer_host) if peer_host is not None else None
    if server_side:
        connection = (r.proto, remote, r.remote_port, local, r.local_port)
        end = ends.setdefault(connection, {"client_host": them})
        end["server_host"] = me
        # Over a window one connection may be seen in several rows, some after its process let go
        # (FIN_WAIT2, TIME_WAIT): a process once seen stays the end's process.
        end["server_process"] = local_process or r.process or end.get("server_process")
    else:
        connection = (r.proto, local, r.local_port, remote, r.remote_port)
        end = ends.setdefault(connection, {"server_host": them, "server_process": remote_process})
        end["client_host"] = me
        end["client_process"] = r.process or end.get("client_process")
        end["server_process"] = end.get("server_process") or remote_process
    if direction == "listener" or "direction" not in end:
        end["direction"] = direction
    end["first_seen"] = min(filter(None, (end.get("first_seen"), r.valid_from)), default=None)
    end["last_seen"] = max(filter(None, (end.get("last_seen"), r.valid_to or moment)), default=None)


def _fold(folded: dict[tuple[Any, ...], Edge], connection: tuple[Any, ...], end: dict[str, Any]) -> None:
    """Count one connection (both its ends merged) in its edge; client ports are folded away."""
    proto, client_address, _, server_address, server_port = connection
    client_host, server_host = end.get("client_host"), end.get("server_host")
    key = (proto, client_host, None if client_host else client_address, end.get("client_process"), server_host,
           None if server_host else server_address, server_port, end.get("server_process"))
    edge = folded.get(key)
    if edge is None:
        edge = folded[key] = Edge(proto, client_host, None if client_host else client_address,
                                  end.get("client_process"), server_host, server_address, server_port,
                                  end.get("server_process"), end["direction"])
    elif end["direction"] == "listener":
        edge.direction = "listener"
    edge.connections.add(connection)
    edge.first_seen = min(filter(None, (edge.first_seen, end["first_seen"])), default=None)
    edge.last_seen = max(filter(None, (edge.last_seen, end["last_seen"])), default=None)


def _unix(rows: Iterable[Any], names: dict[int, str], folded: dict[tuple[Any, ...], Edge], moment: datetime) -> None:
    by_inode = {(r.host_ref, r.inode): r for r in rows}
    done: set[tuple[int, int]] = set()
    for r in rows:
        peer = by_inode.get((r.host_ref, r.peer_inode))
        if peer is None or peer.peer_inode != r.inode or (r.host_ref, r.inode) in done:
            continue
        done.update({(r.host_ref, r.inode), (r.host_ref, peer.inode)})
        if r.pid is not None and r.pid == peer.pid:
            continue  # a socketpair inside one process (an event loop's wake-up pipe): not a conversation
        if r.path and not peer.path:
            server, client, direction = r, peer, "unix path"
        elif peer.path and not r.path:
            server, client, direction = peer, r, "unix path"
        else:
            server, client = (r, peer) if (r.pid or 0) <= (peer.pid or 0) else (peer, r)
            direction = "unix pair"
        host = names.get(r.host_ref)
        key = ("unix", host, client.process, host, server.path, server.process, direction)
        edge = folded.get(key)
        if edge is None:
            edge = folded[key] = Edge("unix", host, None, client.process, host, server.path, None, server.process,
                                      direction)
        edge.connections.add((r.host_ref, min(r.inode, peer.inode)))
        edge.first_seen = min(filter(None, (edge.first_seen, r.valid_from, peer.valid_from)), default=None)
        ends = (edge.last_seen, r.valid_to or moment, peer.valid_to or moment)
        edge.last_seen = max(filter(None, ends), default=None)
