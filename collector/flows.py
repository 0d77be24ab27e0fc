"""Flows: a host's connected sockets folded when they are stored, so that "who talked to whom at T"
reads a few rows per host instead of every connection.

A connected inet socket (as ``talks`` reads them: TCP in any state but TIME_WAIT and LISTEN, or
connected UDP) belongs to one flow of its host: its namespace, protocol, process and endpoints,
with the client's port folded away where the socket's role is certain when it opens:

* ``s`` (served): a listener of the host, open at that moment, holds the socket's own port (exact
  address or wildcard): the socket was accepted, and the peer's port is folded away.
* ``c`` (calling): no listener holds its port, its own port is in the ephemeral range and the
  peer's is not: the socket called out, and its own port is folded away.
* ``n`` (not folded): anything else; both ports are kept, and ``talks`` decides the direction when
  asked, as it does for a socket row.

The ``flows`` table keeps, per host and flow, the number of its sockets open as intervals (a new
row whenever a message changes the number, with the lifetime class of ``collector.spans``), and
``since``: when the flow last went from none to some open sockets.  Each socket row keeps the digest
of its flow (``sockets.flow``), so that closing it finds the flow again.

The store keeps flows as it applies messages; ``Builder`` makes the same rows from socket rows in
the order they opened (for a migration over existing history, for the benchmarks, and for the tests
that hold the two equal).
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sockfleet.collector import spans
from sockfleet.collector.rules import accepts, connected
from sockfleet.connections import CALLING, NOT_FOLDED, SERVED, WILDCARDS, ephemeral, plain

# Identity of a flow within its host, in the order of the flows table's columns.
IDENTITY_COLUMNS = ("netns", "proto", "role", "process", "local_address", "local_port", "remote_address", "remote_port")
ANY_IPV4, ANY_IPV6 = WILDCARDS
# A listener as a flow's role needs it: namespace, protocol, port, address (IPv4-mapped made plain).
Listener = tuple[int, str, int, str]


def listener_of(netns: int, proto: str, local_address: str | None, local_port: int | None) -> Listener:
    return (netns, proto, local_port or 0, plain(local_address) or "")


def identity(
    netns: int,
    proto: str,
    state: str,
    process: str | None,
    local_address: str | None,
    local_port: int | None,
    remote_address: str | None,
    remote_port: int | None,
    listening: Callable[[Listener], bool],
) -> tuple[Any, ...] | None:
    """The flow of a socket as it opens (``IDENTITY_COLUMNS``), or None when it is not a connected inet socket.

    ``listening`` says whether a listener of the host holds a (namespace, protocol, port, address).
    """
    if not connected(proto, state, remote_address):
        return None
    laddr, raddr = plain(local_address), plain(remote_address)
    port = local_port or 0
    if (
        listening((netns, proto, port, laddr or ""))
        or listening((netns, proto, port, ANY_IPV4))
        or listening((netns, proto, port, ANY_IPV6))
    ):
        return (netns, proto, SERVED, process, laddr, local_port, raddr, None)
    if ephemeral(local_port) and not ephemeral(remote_port):
        return (netns, proto, CALLING, process, laddr, None, raddr, remote_port)
    return (netns, proto, NOT_FOLDED, process, laddr, local_port, raddr, remote_port)


def digest(flow: tuple[Any, ...]) -> str:
    """The flow's key within its host (``flows.key``, ``sockets.flow``): its fields as text (none as empty),
    joined by \x1f.  Namespace, protocol and role are never empty; one f-string is faster than a join."""
    netns, proto, role, process, laddr, lport, raddr, rport = flow
    text = (
        f"{netns}\x1f{proto}\x1f{role}\x1f{'' if process is None else process}\x1f{'' if laddr is None else laddr}"
        f"\x1f{'' if lport is None else lport}\x1f{'' if raddr is None else raddr}\x1f{'' if rport is None else rport}"
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class Open:
    """A flow's open row: its identity, number of open sockets, and times."""

    flow: tuple[Any, ...]
    connections: int
    since: datetime
    valid_from: datetime


def version(host_ref: int, key: str, row: Open, valid_to: datetime | None) -> dict[str, Any]:
    """One row of the flows table."""
    return {
        "host_ref": host_ref,
        "key": key,
        **dict(zip(IDENTITY_COLUMNS, row.flow, strict=True)),
        "connections": row.connections,
        "since": row.since,
        "valid_from": row.valid_from,
        "valid_to": valid_to,
        "span": spans.span_of(row.valid_from, valid_to),
    }


def advance(
    open_rows: dict[str, Open], changes: dict[str, int], identities: dict[str, tuple[Any, ...]], moment: datetime
) -> tuple[list[tuple[str, Open]], list[tuple[str, Open]]]:
    """Apply net changes of open sockets per flow at ``moment``.

    Returns the rows closed (each with its key) and the rows opened; ``open_rows`` is updated.
    A flow whose number does not change keeps its row.
    """
    closed, opened = [], []
    for key, change in changes.items():
        if change == 0:
            continue
        old = open_rows.pop(key, None)
        if old is not None:
            closed.append((key, old))
        count = (old.connections if old else 0) + change
        if count > 0:
            flow = old.flow if old else identities[key]
            new = Open(flow, count, old.since if old else moment, moment)
            open_rows[key] = new
            opened.append((key, new))
    return closed, opened


class Builder:
    """Flows made from socket rows of any hosts, fed in the order they opened (ties: listeners first).

    ``add`` returns the socket's flow key (None for a socket of no flow); finished flow rows go to
    ``emit`` as dicts of the flows table's columns, open ones when ``finish`` is called.
    """

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        # Per host, the times each listener (namespace, protocol, port, address) was open.
        self.listeners: dict[int, dict[Listener, list[tuple[datetime, datetime | None]]]] = defaultdict(dict)
        self.open: dict[int, dict[str, Open]] = defaultdict(dict)
        self.identities: dict[tuple[int, str], tuple[Any, ...]] = {}
        self.closing: list[tuple[datetime, int, str]] = []
        self.moment: datetime | None = None
        self.opening: list[tuple[int, str]] = []

    def add(
        self,
        host_ref: int,
        valid_from: datetime,
        valid_to: datetime | None,
        netns: int,
        proto: str,
        state: str,
        process: str | None,
        local_address: str | None,
        local_port: int | None,
        remote_address: str | None,
        remote_port: int | None,
    ) -> str | None:
        if valid_from != self.moment:
            self._settle(valid_from)
            self.moment = valid_from
        if accepts(proto, state):
            held = self.listeners[host_ref].setdefault(listener_of(netns, proto, local_address, local_port), [])
            held.append((valid_from, valid_to))
            return None
        listeners = self.listeners.get(host_ref, {})

        def listening(wanted: Listener) -> bool:
            return any(
                start <= valid_from and (end is None or end > valid_from) for start, end in listeners.get(wanted, ())
            )

        flow = identity(netns, proto, state, process, local_address, local_port, remote_address, remote_port, listening)
        if flow is None:
            return None
        key = digest(flow)
        self.identities[(host_ref, key)] = flow
        self.opening.append((host_ref, key))
        if valid_to is not None:
            heapq.heappush(self.closing, (valid_to, host_ref, key))
        return key

    def finish(self) -> None:
        self._settle(None)
        for host_ref, rows in self.open.items():
            for key, row in rows.items():
                self.emit(version(host_ref, key, row, None))
        self.open.clear()

    def _settle(self, until: datetime | None) -> None:
        """Apply every change before ``until`` (all, when None): closings, with the openings of their moment."""
        while True:
            moment = self.closing[0][0] if self.closing else None
            if self.moment is not None and self.opening and (moment is None or self.moment <= moment):
                moment = self.moment
            if moment is None or (until is not None and moment >= until):
                return
            changes: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            while self.closing and self.closing[0][0] == moment:
                _, host_ref, key = heapq.heappop(self.closing)
                changes[host_ref][key] -= 1
            if moment == self.moment:
                for host_ref, key in self.opening:
                    changes[host_ref][key] += 1
                self.opening = []
            for host_ref, change in changes.items():
                identities = {key: self.identities[(host_ref, key)] for key in change}
                closed, _ = advance(self.open[host_ref], change, identities, moment)
                for key, row in closed:
                    self.emit(version(host_ref, key, row, moment))


def rebuild(rows: Iterable[Any], emit: Callable[[dict[str, Any]], None]) -> dict[int, str]:
    """Flows of socket rows (with the columns ``Builder.add`` takes, and ``id``); returns each socket id's flow key."""
    keys = {}
    builder = Builder(emit)
    for row in sorted(rows, key=lambda r: (r.valid_from, not accepts(r.proto, r.state), r.id)):
        key = builder.add(
            row.host_ref,
            row.valid_from,
            row.valid_to,
            row.netns,
            row.proto,
            row.state,
            row.process,
            row.local_address,
            row.local_port,
            row.remote_address,
            row.remote_port,
        )
        if key is not None:
            keys[row.id] = key
    builder.finish()
    return keys
