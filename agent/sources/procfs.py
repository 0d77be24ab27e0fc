"""Sockets from the text tables ``/proc/PID/net/{tcp,tcp6,udp,udp6,unix}``.

The fallback where netlink is refused.  It cannot see the peer of a Unix
socket nor the uid of a Unix socket, so those fields are ``None``.

An inet line (``net/ipv4/tcp_ipv4.c``, ``get_tcp4_sock``)::

    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 4242 ..."
       -> local 127.0.0.1:8080, no peer, LISTEN, uid 1000, inode 4242

Addresses are 32-bit words in host byte order; IPv6 has four of them.
A Unix line (``net/unix/af_unix.c``, ``unix_seq_show``)::

    "0000000000000000: 00000002 00000000 00010000 0001 01 4243 /run/app.sock"
       -> stream, listening (flag __SO_ACCEPTCON), inode 4243, path /run/app.sock
"""

from __future__ import annotations

import socket
import struct

from sockfleet.agent.errors import ParseError, SourceError
from sockfleet.agent.records import TCP_STATES, Family, Namespace, Proto, SockType, State, datagram_state
from sockfleet.agent.table import SocketTable

NAME = "procfs"
DESCRIPTION = "text tables under /proc/PID/net (Linux fallback; no Unix peers)"

SO_ACCEPTCON = 0x10000
SS_CONNECTED = 3
UNIX_TYPES = {1: SockType.STREAM, 2: SockType.DGRAM, 5: SockType.SEQPACKET}
_WORD = struct.Struct("=I")
_WORDS = struct.Struct("=IIII")
TABLES = {
    Proto.TCP: (("tcp", Family.INET), ("tcp6", Family.INET6)),
    Proto.UDP: (("udp", Family.INET), ("udp6", Family.INET6)),
}


def parse_endpoint(text: str, family: Family) -> tuple[str, int]:
    """``"0100007F:1F90"`` → ``("127.0.0.1", 8080)`` on a little-endian host."""
    address, _, port = text.partition(":")
    if family is Family.INET:
        if len(address) != 8:
            raise ValueError(f"IPv4 address {address!r} is not 8 hex digits")
        raw = _WORD.pack(int(address, 16))
        return socket.inet_ntop(socket.AF_INET, raw), int(port, 16)
    if len(address) != 32:
        raise ValueError(f"IPv6 address {address!r} is not 32 hex digits")
    words = (int(address[i : i + 8], 16) for i in range(0, 32, 8))
    return socket.inet_ntop(socket.AF_INET6, _WORDS.pack(*words)), int(port, 16)


def parse_inet(
    text: str, netns: int, proto: Proto, family: Family, table: str = "", into: SocketTable | None = None
) -> SocketTable:
    """Rows from one ``/proc/net/{tcp,tcp6,udp,udp6}`` table (header line first), added to ``into`` or to a
    new table."""
    rows = SocketTable(netns) if into is None else into
    kind = SockType.STREAM if proto is Proto.TCP else SockType.DGRAM
    lines = text.splitlines()
    if not lines or not lines[0].lstrip().startswith("sl"):
        raise ParseError(NAME, f"{table or proto}: missing header line")
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        try:
            local, lport = parse_endpoint(fields[1], family)
            remote, rport = parse_endpoint(fields[2], family)
            kstate = int(fields[3], 16)
            tx_queue, _, rx_queue = fields[4].partition(":")
            uid = int(fields[7])
            inode = int(fields[9])
            queues = (int(rx_queue, 16), int(tx_queue, 16))
        except (IndexError, ValueError) as exc:
            raise ParseError(NAME, f"{table or proto} line {number}: {exc or 'too few fields'}") from exc
        state = TCP_STATES.get(kstate, State.CLOSE) if proto is Proto.TCP else datagram_state(kstate)
        unconnected = rport == 0 and remote in ("0.0.0.0", "::")
        rows.add(proto, family, kind, state, local, lport, None if unconnected else remote,
                 None if unconnected else rport, None, None, inode, uid, *queues)  # fmt: skip
    return rows


def parse_unix(text: str, netns: int, into: SocketTable | None = None) -> SocketTable:
    """Rows from ``/proc/net/unix`` (header line first), added to ``into`` or to a new table; abstract names
    keep their ``@``."""
    rows = SocketTable(netns) if into is None else into
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Num"):
        raise ParseError(NAME, "unix: missing header line")
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(maxsplit=7)
        try:
            flags = int(fields[3], 16)
            kind = UNIX_TYPES[int(fields[4], 16)]
            sstate = int(fields[5], 16)
            inode = int(fields[6])
        except (IndexError, ValueError, KeyError) as exc:
            raise ParseError(NAME, f"unix line {number}: {exc or 'too few fields'}") from exc
        if flags & SO_ACCEPTCON:
            state = State.LISTEN
        elif sstate == SS_CONNECTED:
            state = State.ESTABLISHED
        else:
            state = State.UNCONN
        path = fields[7] if len(fields) > 7 else None
        rows.add(Proto.UNIX, Family.UNIX, kind, state, None, None, None, None, path, None, inode, None, 0, 0)
    return rows


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="backslashreplace") as table:
            return table.read()
    except OSError as exc:
        raise SourceError(NAME, f"cannot read {path}: {exc.strerror}") from exc


def collect(ns: Namespace, protos: frozenset[Proto], proc_root: str = "/proc") -> SocketTable:
    """Every socket of ``protos`` in ``ns``, read through a process that lives in it."""
    if ns.pid is None:
        raise SourceError(NAME, f"netns {ns.inode} has no process to read /proc/PID/net through")
    base = f"{proc_root}/{ns.pid}/net"
    rows = SocketTable(ns.inode)
    for proto, tables in TABLES.items():
        if proto in protos:
            for table, family in tables:
                parse_inet(_read(f"{base}/{table}"), ns.inode, proto, family, table, rows)
    if Proto.UNIX in protos:
        parse_unix(_read(f"{base}/unix"), ns.inode, rows)
    return rows
