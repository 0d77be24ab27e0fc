"""Connections that closed between two scans, from the kernel's socket-destroy events.

Linux (4.10 and later) broadcasts every destroyed TCP and UDP socket on four ``NETLINK_SOCK_DIAG``
multicast groups (``SKNLGRP_INET_TCP_DESTROY``, ``..._UDP_DESTROY`` and their INET6 twins).  Each event is
one ``inet_diag_msg`` as a dump answers it, with ``INET_DIAG_PROTOCOL`` (u8) and ``INET_DIAG_INFO``: for TCP
a ``tcp_info`` whose ``tcpi_bytes_acked`` and ``tcpi_bytes_received`` (u64 at bytes 120 and 128) are the
bytes this end sent and received over the connection's life (each counts the connection's FIN as one byte).
Joining another namespace's groups needs CAP_SYS_ADMIN (to enter it); no more: any process may join the
groups of the namespace it is in.  A namespace where this is refused is reported in the scan's coverage,
never fatal.

``Events`` reads one netlink socket per scanned namespace in a thread and folds the events into counters
per flow, keyed as the collector keys flows (``sockfleet.connections``): namespace, protocol, role,
process, local address and port, remote address and port, the client's port folded away.  An end whose
local port a listener holds (as of the last scan) serves and takes the listener's process; an end whose
peer is a listener of the same namespace (a call on the host itself), or whose own port is ephemeral and
the peer's is not, calls; a socket the last scan saw keeps its owner; otherwise the process is unknown
(null), never guessed.  Events without a
peer (unconnected UDP sockets, listeners) are not connections and are not counted.  A connection a scan
saw is counted in ``connections`` but not in ``short_lived``: the collector already counts it from its
socket rows.

Bytes of connections that stay open: at each scan (``learn``) one more TCP dump with ``INET_DIAG_INFO``
reads every open connection's counters; a flow gets what its connections moved since the previous
reading (flows with no closed connection carry bytes only), and a connection that closes later counts
only what it moved after the last reading.  The first reading of a namespace is a baseline.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from sockfleet.agent.errors import ParseError
from sockfleet.agent.netns import entered
from sockfleet.agent.records import Namespace, Proto, Snapshot, State
from sockfleet.agent.sources.netlink import (
    INET_MSG,
    NETLINK_SOCK_DIAG,
    NLMSG_DONE,
    NLMSGHDR,
    PORTS,
    RTATTR,
    SOCK_DIAG_BY_FAMILY,
    dump,
    request,
)
from sockfleet.connections import CALLING, GONE, NOT_FOLDED, SERVED, WILDCARDS, ephemeral, plain

log = logging.getLogger("sockfleet.agent")

NAME = "events"
GROUPS = 0b1111  # SKNLGRP_INET_TCP_DESTROY, _INET_UDP_, _INET6_TCP_, _INET6_UDP_DESTROY (groups 1-4)
INET_DIAG_INFO, INET_DIAG_PROTOCOL = 2, 10
TCP_BYTES = struct.Struct("=QQ")  # tcpi_bytes_acked, tcpi_bytes_received
TCP_BYTES_AT = 120
PROTOCOLS = {socket.IPPROTO_TCP: Proto.TCP, socket.IPPROTO_UDP: Proto.UDP}
RECEIVE_BUFFER = 4 << 20  # room for a burst of about 10,000 events while the thread is busy
BATCH = 0.05  # seconds the reader lets events gather after the first: at 10,000 a second, 500 in the buffer
MAX_FLOWS = 10_000  # distinct flows folded per interval; events beyond are counted as overflowed
NLMSG_ERROR = 2


class Closed(NamedTuple):
    """One destroyed socket with a peer: its endpoints and the bytes this end sent and received (None: UDP)."""

    netns: int
    proto: Proto
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    sent: int | None
    received: int | None


_NAMES: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}  # addresses seen, as text


def parse(data: bytes, netns: int) -> list[Closed]:
    """The connected sockets in one datagram of destroy events; others (no peer) are left out.

    This runs once per closed socket of the host, so each address is turned into text once (``_NAMES``).
    """
    found: list[Closed] = []
    offset, size = 0, len(data)
    header, body = NLMSGHDR.size, INET_MSG.size
    while offset < size:
        if offset + header > size:
            raise ParseError(NAME, f"truncated netlink header at byte {offset} of {size}")
        length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
        if length < header or offset + length > size:
            raise ParseError(NAME, f"netlink message of {length} bytes at byte {offset} overruns {size}")
        start, end = offset + header, offset + length
        offset += (length + 3) & ~3
        if kind != SOCK_DIAG_BY_FAMILY:
            continue
        if end - start < body:
            raise ParseError(NAME, f"destroy event of {end - start} bytes is shorter than {body}")
        family, _, _, src, dst, _, _, _, _ = INET_MSG.unpack_from(data, start)
        sport, dport = PORTS.unpack_from(data, start + 4)
        names = _NAMES.get(family)
        if names is None:
            raise ParseError(NAME, f"unknown address family {family} in a destroy event")
        protocol, info_at, info_size = _attributes(data, start + body, end)
        proto = PROTOCOLS.get(protocol or 0)
        if proto is None or dport == 0:
            continue  # not TCP or UDP, or no peer: not a connection
        local = names.get(src) or _name(names, family, src)
        remote = names.get(dst) or _name(names, family, dst)
        sent = received = None
        if proto is Proto.TCP and info_size >= TCP_BYTES_AT + TCP_BYTES.size:
            sent, received = TCP_BYTES.unpack_from(data, info_at + TCP_BYTES_AT)
        found.append(Closed(netns, proto, local, sport, remote, dport, sent, received))
    return found


def _name(names: dict[bytes, str], family: int, raw: bytes) -> str:
    if len(names) > 100_000:
        names.clear()
    text = names[raw] = socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)
    return text


def _attributes(data: bytes, offset: int, end: int) -> tuple[int | None, int, int]:
    """The event's protocol, and where its ``INET_DIAG_INFO`` starts and how long it is (0: absent)."""
    protocol: int | None = None
    info_at = info_size = 0
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > end:
            raise ParseError(NAME, f"attribute of {length} bytes at byte {offset} overruns {end}")
        if kind == INET_DIAG_PROTOCOL and length > RTATTR.size:
            protocol = data[offset + RTATTR.size]
        elif kind == INET_DIAG_INFO:
            info_at, info_size = offset + RTATTR.size, length - RTATTR.size
        offset += (length + 3) & ~3
    return protocol, info_at, info_size


Ends = tuple[int, str, str, int, str, int]  # netns, proto, local address and port, remote address and port
# TCP states that can move bytes: every state but LISTEN (10) and TIME_WAIT (6), as a bit mask.
MOVING = 0xFFF & ~(1 << 10) & ~(1 << 6)


def readings(chunks: Iterable[bytes], netns: int) -> dict[Ends, tuple[int, int]]:
    """Bytes sent and received so far by each TCP connection of a dump asked with ``INET_DIAG_INFO``."""
    found: dict[Ends, tuple[int, int]] = {}
    for data in chunks:
        offset, size = 0, len(data)
        while offset < size:
            if offset + NLMSGHDR.size > size:
                raise ParseError(NAME, f"truncated netlink header at byte {offset} of {size}")
            length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size or offset + length > size:
                raise ParseError(NAME, f"netlink message of {length} bytes at byte {offset} overruns {size}")
            if kind == NLMSG_DONE:
                return found
            start, end = offset + NLMSGHDR.size, offset + length
            offset += (length + 3) & ~3
            if kind != SOCK_DIAG_BY_FAMILY or end - start < INET_MSG.size:
                continue
            family, _, _, src, dst, _, _, _, _ = INET_MSG.unpack_from(data, start)
            sport, dport = PORTS.unpack_from(data, start + 4)
            names = _NAMES.get(family)
            _, info_at, info_size = _attributes(data, start + INET_MSG.size, end)
            if names is None or dport == 0 or info_size < TCP_BYTES_AT + TCP_BYTES.size:
                continue
            local = plain(names.get(src) or _name(names, family, src)) or ""
            remote = plain(names.get(dst) or _name(names, family, dst)) or ""
            found[(netns, "tcp", local, sport, remote, dport)] = TCP_BYTES.unpack_from(data, info_at + TCP_BYTES_AT)
    raise ParseError(NAME, "the dump ended without NLMSG_DONE")


FlowKey = tuple[int, str, str, str | None, str, int | None, str, int | None]  # netns, proto, role, process, ...


@dataclass(slots=True)
class Counts:
    """One flow's closed connections in an interval."""

    connections: int = 0
    short_lived: int = 0
    sent: int = 0
    received: int = 0
    bytes_known: bool = True
    first: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class Closings:
    """What ``Events.take`` hands to a scan: the folded flows, and what could not be counted."""

    flows: dict[FlowKey, Counts] = field(default_factory=dict)
    lost: int = 0  # times the kernel dropped events (ENOBUFS): at least one event each
    overflowed: int = 0  # events beyond MAX_FLOWS distinct flows
    unseen: dict[int, str] = field(default_factory=dict)  # namespace -> why its events cannot be read


class Known(NamedTuple):
    """What the last scan knew: listeners by (netns, proto, port) -> {address: process}, and connected
    sockets by their endpoints -> process."""

    listeners: dict[tuple[int, str, int], dict[str, str | None]]
    connected: dict[tuple[int, str, str, int, str, int], str | None]


def known(snap: Snapshot) -> Known:
    listeners: dict[tuple[int, str, int], dict[str, str | None]] = {}
    connected: dict[tuple[int, str, str, int, str, int], str | None] = {}
    for s in snap.sockets:
        if s.proto is Proto.UNIX or s.local_port is None:
            continue
        pids = snap.owners.get(s.inode)
        process = snap.processes[pids[0]].name if pids and pids[0] in snap.processes else None
        if s.remote_address is None or s.state is State.LISTEN:
            listeners.setdefault((s.netns, s.proto.value, s.local_port), {})[plain(s.local_address) or ""] = process
        elif s.remote_port is not None and s.state.value not in GONE:  # as the collector counts connections
            key = (s.netns, s.proto.value, plain(s.local_address) or "", s.local_port)
            connected[(*key, plain(s.remote_address) or "", s.remote_port)] = process
    return Known(listeners, connected)


def fold(event: Closed, knowledge: Iterable[Known]) -> tuple[FlowKey, bool]:
    """The flow an event belongs to, and whether a scan saw its connection."""
    proto = event.proto.value
    laddr, raddr = plain(event.local_address) or "", plain(event.remote_address) or ""
    ends = (event.netns, proto, laddr, event.local_port, raddr, event.remote_port)
    seen, process, listener, calls_listener = False, None, None, False
    for k in knowledge:
        if ends in k.connected:
            seen, process = True, k.connected[ends]
        if listener is None:
            listener = _held(k, event.netns, proto, event.local_port, laddr)
        calls_listener = calls_listener or _held(k, event.netns, proto, event.remote_port, raddr) is not None
    if listener is not None:
        owner = process or listener[0]
        return (event.netns, proto, SERVED, owner, laddr, event.local_port, raddr, None), seen
    if calls_listener or (ephemeral(event.local_port) and not ephemeral(event.remote_port)):
        return (event.netns, proto, CALLING, process, laddr, None, raddr, event.remote_port), seen
    return (event.netns, proto, NOT_FOLDED, process, laddr, event.local_port, raddr, event.remote_port), seen


def _held(k: Known, netns: int, proto: str, port: int, address: str) -> tuple[str | None] | None:
    """The process of the listener in ``netns`` that holds ``address``:``port`` (or a wildcard), if any."""
    held = k.listeners.get((netns, proto, port))
    if held is None:
        return None
    found = next((a for a in (address, *WILDCARDS) if a in held), None)
    return None if found is None else (held[found],)


class Events:
    """Destroy events of every scanned namespace, read in a thread and folded until the next scan takes them.

    ``hold`` at a scan's start keeps events raw until ``learn`` has the scan's sockets, so that a connection
    that the scan read and that closed while it ran is judged against both scans, and never counted twice.
    An event read between scans is judged against the last two: it may be of a connection that closed before
    the last scan and reached the reader only after it.
    """

    def __init__(self, receive_buffer: int = RECEIVE_BUFFER, max_flows: int = MAX_FLOWS) -> None:
        self.receive_buffer = receive_buffer
        self.max_flows = max_flows
        self.sockets: dict[int, socket.socket] = {}
        self.unseen: dict[int, str] = {}
        self.lock = threading.Lock()
        self.current = Closings()
        self.knowledge = Known({}, {})
        # What the scan before the last knew: an event read after a scan may be of a connection that closed
        # before it, while the reader let its batch gather or waited for the processor.
        self.previous = Known({}, {})
        self.spaces: dict[int, Namespace] = {}
        self.readings: dict[Ends, tuple[int, int]] | None = None  # bytes of open connections at the last scan
        self.read_at = 0.0
        self.read_spaces: set[int] = set()  # namespaces the last reading covered
        self.held: list[tuple[Closed, float]] | None = None
        self.stopping = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.thread = threading.Thread(target=self._read, name="sockfleet-events", daemon=True)
        self.thread.start()

    def watch(self, spaces: Iterable[Namespace]) -> None:
        """Listen in each of ``spaces`` not yet listened in; stop listening in namespaces that are gone."""
        wanted = {ns.inode: ns for ns in spaces}
        with self.lock:
            self.spaces = wanted
            for inode in [i for i in self.sockets if i not in wanted]:
                self.sockets.pop(inode).close()
            for inode in [i for i in self.unseen if i not in wanted]:
                del self.unseen[inode]
            for inode, ns in wanted.items():
                if inode not in self.sockets and inode not in self.unseen:
                    self._open(ns)
        self.wake_w.send(b"w")

    def _open(self, ns: Namespace) -> None:
        try:
            with entered(ns):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_SOCK_DIAG)
            try:
                sock.bind((0, GROUPS))
                _grow(sock, self.receive_buffer)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            refused = exc.errno == errno.EPERM
            reason = "not permitted: entering the namespace needs CAP_SYS_ADMIN" if refused else str(exc)
            self.unseen[ns.inode] = f"connections between scans not seen: joining sock_diag events refused ({reason})"
            log.warning("namespace %d: %s", ns.inode, self.unseen[ns.inode])
            return
        self.sockets[ns.inode] = sock

    def hold(self) -> None:
        with self.lock:
            self.held = []

    def learn(self, snap: Snapshot | None) -> None:
        """The scan's listeners and connections; events held since ``hold`` are folded against both scans,
        and the bytes open TCP connections moved since the previous scan are counted.  None: the scan
        failed, and what the previous one knew stays."""
        fresh = known(snap) if snap is not None else self.knowledge
        now = time.time()
        current = self._read_bytes() if snap is not None else None
        with self.lock:
            held, self.held = self.held or [], None
            for event, at in held:  # closed after this reading: only what it moved since counts
                baseline = current if current is not None and at > now and _ends(event) in current else None
                self._add(event, at, (self.knowledge, fresh), baseline)
            if current is not None:
                if self.readings is not None:
                    self._moved(current, fresh, now)
                self.readings, self.read_at = current, now
                self.read_spaces = {ends[0] for ends in current} | set(self.spaces)
            self.previous, self.knowledge = self.knowledge, fresh

    def _read_bytes(self) -> dict[Ends, tuple[int, int]] | None:
        """Bytes sent and received so far by every open TCP connection of the watched namespaces."""
        with self.lock:
            spaces = [ns for inode, ns in self.spaces.items() if inode in self.sockets]
        if not spaces:
            return None
        found: dict[Ends, tuple[int, int]] = {}
        ask = 1 << (INET_DIAG_INFO - 1)
        try:
            for ns in spaces:
                with entered(ns):
                    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
                with sock:
                    for family in (socket.AF_INET, socket.AF_INET6):
                        chunks = dump(sock, request(family, socket.IPPROTO_TCP, ask, MOVING))
                        found.update(readings(chunks, ns.inode))
        except (OSError, ParseError) as exc:
            log.warning("bytes of open connections not read: %s", exc)
            return None
        return found

    def _moved(self, current: dict[Ends, tuple[int, int]], fresh: Known, now: float) -> None:
        """Bytes each open connection moved since the last reading (all of them for one opened since)."""
        assert self.readings is not None
        for ends, (sent, received) in current.items():
            if ends[0] not in self.read_spaces:
                continue  # a namespace read for the first time: its connections' bytes so far are the baseline
            before = self.readings.get(ends, (0, 0))
            moved = (sent - before[0], received - before[1])
            if moved[0] <= 0 and moved[1] <= 0:
                continue
            netns, _, local, local_port, remote, remote_port = ends
            key, _ = fold(Closed(netns, Proto.TCP, local, local_port, remote, remote_port, None, None), (fresh,))
            counts = self._counts(key, self.read_at)
            if counts is not None:
                counts.sent += max(moved[0], 0)
                counts.received += max(moved[1], 0)
                counts.last = now

    def take(self) -> Closings:
        """The flows folded since the last take, and what could not be counted; counting starts again."""
        with self.lock:
            taken, self.current = self.current, Closings()
            taken.unseen = dict(self.unseen)
        return taken

    def close(self) -> None:
        self.stopping = True
        self.wake_w.send(b"s")
        self.thread.join(timeout=5)
        with self.lock:
            for sock in self.sockets.values():
                sock.close()
            self.sockets.clear()
        self.wake_r.close()
        self.wake_w.close()

    def _read(self) -> None:
        while not self.stopping:
            with self.lock:
                watched = dict(self.sockets)
            readable, _, _ = select.select([self.wake_r, *watched.values()], [], [], 1.0)
            if self.wake_r in readable:
                self.wake_r.recv(64)
            time.sleep(BATCH)  # let events gather: one read of many costs far less than many reads of one
            for inode, sock in watched.items():
                if sock in readable:
                    try:
                        self._drain(inode, sock)
                    except Exception as exc:  # never let one bad read end the listening
                        log.error("reading socket-destroy events: %s", exc)
                        with self.lock:
                            self.current.lost += 1

    def _drain(self, inode: int, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: count it, read on
                    with self.lock:
                        self.current.lost += 1
                    continue
                return  # the socket was closed by watch()
            try:
                events = parse(data, inode)
            except ParseError as exc:
                log.warning("%s", exc)
                with self.lock:
                    self.current.lost += 1
                continue
            now = time.time()
            with self.lock:
                for event in events:
                    if self.held is not None:
                        self.held.append((event, now))
                    else:
                        self._add(event, now, (self.previous, self.knowledge), None)

    def _counts(self, key: FlowKey, at: float) -> Counts | None:
        counts = self.current.flows.get(key)
        if counts is None:
            if len(self.current.flows) >= self.max_flows:
                self.current.overflowed += 1
                return None
            counts = self.current.flows[key] = Counts(first=at, last=at)
        return counts

    def _add(
        self, event: Closed, at: float, knowledge: tuple[Known, ...], baseline: dict[Ends, tuple[int, int]] | None
    ) -> None:
        """Count one closed connection; its bytes less what the last reading of open connections counted."""
        key, seen = fold(event, knowledge)
        counts = self._counts(key, at)
        if counts is None:
            return
        counts.connections += 1
        counts.short_lived += 0 if seen else 1
        if event.sent is None or event.received is None:
            counts.bytes_known = False
        else:
            before = (baseline if baseline is not None else self.readings or {}).get(_ends(event), (0, 0))
            counts.sent += max(event.sent - before[0], 0)
            counts.received += max(event.received - before[1], 0)
        counts.last = max(counts.last, at)


def _ends(event: Closed) -> Ends:
    local, remote = plain(event.local_address) or "", plain(event.remote_address) or ""
    return (event.netns, event.proto.value, local, event.local_port, remote, event.remote_port)


def _grow(sock: socket.socket, size: int) -> None:
    """A receive buffer of ``size``: forced past the system's limit where allowed (CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
