"""Sockets from the kernel's ``NETLINK_SOCK_DIAG`` interface: inet_diag and unix_diag.

One dump request per family and protocol; the kernel answers with a stream of
``nlmsghdr`` + ``inet_diag_msg`` (``include/uapi/linux/inet_diag.h``) or
``nlmsghdr`` + ``unix_diag_msg`` + attributes (``include/uapi/linux/unix_diag.h``).

``inet_diag_msg`` (72 bytes)::

    u8 family, state, timer, retrans
    be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]
    u32 expires, rqueue, wqueue, uid, inode

``unix_diag_msg`` (16 bytes) is ``u8 family, type, state, pad; u32 ino;
u32 cookie[2]``, followed by ``rtattr`` attributes: ``UNIX_DIAG_NAME`` (the
``sun_path`` bytes; a leading NUL marks an abstract name), ``UNIX_DIAG_PEER``
(u32 inode), ``UNIX_DIAG_RQLEN`` (u32 rqueue, wqueue), ``UNIX_DIAG_UID`` (u32).
"""

from __future__ import annotations

import socket
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator

from sockfleet.agent.errors import ParseError, SourceError
from sockfleet.agent.netns import entered
from sockfleet.agent.records import TCP_STATES, Family, Namespace, Proto, SockType, State, datagram_state
from sockfleet.agent.table import KIND, ROW, STATE, SocketTable

NAME = "netlink"
DESCRIPTION = "kernel sock_diag over netlink (Linux; fastest)"

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
ALL_STATES = 0xFFFFFFFF
UDIAG_SHOW = 0x01 | 0x04 | 0x10 | 0x40  # NAME | PEER | RQLEN | UID
UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_UID = 0, 2, 4, 7

NLMSGHDR = struct.Struct("=IHHII")
INET_REQ = struct.Struct("=BBBxI48x")
UNIX_REQ = struct.Struct("=BBxxIIIII")
INET_MSG = struct.Struct("=BB2x4s16s16s16xIIII")
PORTS = struct.Struct(">HH")
# nlmsghdr (length, type) and inet_diag_msg (family, state, ports, src, dst, rqueue, wqueue, uid, inode)
# read at once; the ports are big-endian, read in host order and swapped through _SWAPPED.
INET_ANSWER = struct.Struct("=IH10xBB2xHH16s16s16xIIII")
UNIX_MSG = struct.Struct("=BBBxI8x")
RTATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")
U32X2 = struct.Struct("=II")

UNIX_TYPES = {1: SockType.STREAM, 2: SockType.DGRAM, 5: SockType.SEQPACKET}
_FAMILIES = {socket.AF_INET: Family.INET, socket.AF_INET6: Family.INET6}
_PROTOCOLS = {Proto.TCP: socket.IPPROTO_TCP, Proto.UDP: socket.IPPROTO_UDP}
_SEQ = 1
_ZERO = bytes(16)
_DATAGRAM_STATES = {1: State.ESTABLISHED, 10: State.LISTEN}  # anything else: UNCONN
_SWAPPED = array("H", range(65536))  # 128 KiB; a list of the same ints held 2.6 MB in every agent
if sys.byteorder == "little":
    _SWAPPED.byteswap()
_TCP_STATE_NUMBERS = [STATE[TCP_STATES.get(k, State.CLOSE)] for k in range(256)]
_DATAGRAM_STATE_NUMBERS = [STATE[_DATAGRAM_STATES.get(k, State.UNCONN)] for k in range(256)]
_ATTR_SIZES = {UNIX_DIAG_PEER: 4, UNIX_DIAG_RQLEN: 8, UNIX_DIAG_UID: 4}


def request(family: int, protocol: int | None = None, extensions: int = 0, states: int = ALL_STATES) -> bytes:
    """The dump request for one family (and, for inet, one protocol, the extensions asked for as
    ``idiag_ext`` bits, and the states as a bit mask)."""
    if family == socket.AF_UNIX:
        body = UNIX_REQ.pack(socket.AF_UNIX, 0, ALL_STATES, 0, UDIAG_SHOW, 0, 0)
    else:
        body = INET_REQ.pack(family, protocol or 0, extensions, states)
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, _SEQ, 0)
    return header + body


def dump(sock: socket.socket, message: bytes) -> Iterator[bytes]:
    """Send one dump request; yield the answer's datagrams as they come.

    The parser that consumes them stops at ``NLMSG_DONE``, so the reads stop there too.
    """
    sock.send(message)
    while True:
        yield sock.recv(1 << 16)


def _messages(chunks: Iterable[bytes], minimum: int) -> Iterator[tuple[bytes, int, int]]:
    """(datagram, offset of payload, end of message) of each sock_diag answer, up to ``NLMSG_DONE``."""
    unpack_header = NLMSGHDR.unpack_from
    header = NLMSGHDR.size
    for chunk in chunks:
        offset = 0
        size = len(chunk)
        while offset < size:
            if offset + header > size:
                raise ParseError(NAME, f"truncated netlink header at byte {offset} of {size}")
            length, kind, _, _, _ = unpack_header(chunk, offset)
            if length < header or offset + length > size:
                raise ParseError(NAME, f"netlink message of {length} bytes at byte {offset} overruns {size}")
            if kind == SOCK_DIAG_BY_FAMILY:
                if length - header < minimum:
                    raise ParseError(NAME, f"sock_diag answer of {length} bytes is shorter than {minimum}")
                yield chunk, offset + header, offset + length
            elif kind == NLMSG_DONE:
                return
            else:
                _check_control(chunk, offset, kind)
            offset += (length + 3) & ~3
    raise ParseError(NAME, "the dump ended without NLMSG_DONE")


def parse_inet(  # noqa: C901, PLR0912 - the loop run once per socket stays in one piece
    chunks: Iterable[bytes], netns: int, proto: Proto, into: SocketTable | None = None
) -> SocketTable:
    """Rows (``agent.table``) from inet_diag answers, added to ``into`` or to a new table.

    ``src``/``dst`` are 16 bytes; an AF_INET answer uses the first 4.  Example:
    family 2, state 10, sport 0x1f90, src ``7f000001`` → ``("127.0.0.1", 8080, LISTEN)``.

    This loop runs once per socket of the host, so it walks the netlink headers
    itself instead of going through ``_messages``, reads header and answer with one
    ``unpack_from`` (the ports in host order, swapped by a table), and packs each row
    straight into the table's buffer: about 0.6 µs per socket, against 1.5 µs for
    a record object per socket.
    """
    table = SocketTable(netns) if into is None else into
    rows = table.rows
    text = table.text
    pack = ROW.pack
    unpack = INET_ANSWER.unpack_from
    unpack_header = NLMSGHDR.unpack_from
    swap = _SWAPPED
    kinds = {
        family: KIND[proto, _FAMILIES[family], SockType.STREAM if proto is Proto.TCP else SockType.DGRAM]
        for family in _FAMILIES
    }
    numbers: dict[int, dict[bytes, int]] = {family: {} for family in _FAMILIES}
    states = _TCP_STATE_NUMBERS if proto is Proto.TCP else _DATAGRAM_STATE_NUMBERS
    header = NLMSGHDR.size
    minimum = INET_ANSWER.size
    for chunk in chunks:
        offset = 0
        size = len(chunk)
        whole = size - minimum  # the last offset at which a whole answer fits
        while offset < size:
            if offset <= whole:
                length, mtype, family, kstate, sport, dport, src, dst, rqueue, wqueue, uid, inode = unpack(
                    chunk, offset
                )
            elif offset + header > size:
                raise ParseError(NAME, f"truncated netlink header at byte {offset} of {size}")
            else:
                length, mtype, _, _, _ = unpack_header(chunk, offset)
            if length < header or offset + length > size:
                raise ParseError(NAME, f"netlink message of {length} bytes at byte {offset} overruns {size}")
            if mtype != SOCK_DIAG_BY_FAMILY:
                if mtype == NLMSG_DONE:
                    return table
                _check_control(chunk, offset, mtype)
                offset += (length + 3) & ~3
                continue
            if length < minimum:
                raise ParseError(NAME, f"sock_diag answer of {length} bytes is shorter than {minimum}")
            offset += (length + 3) & ~3
            known = numbers.get(family)
            if known is None:
                raise ParseError(NAME, f"unknown address family {family} in inet_diag answer")
            local = known.get(src)
            if local is None:
                local = known[src] = text(_address(family, src))
            if dport == 0 and dst == _ZERO:
                remote, rport = 0, -1
            else:
                number = known.get(dst)
                remote = known[dst] = text(_address(family, dst)) if number is None else number
                rport = swap[dport]
            rows += pack(inode, 0, uid, local, remote, 0, swap[sport], rport, rqueue, wqueue, kinds[family],
                         states[kstate])  # fmt: skip
    raise ParseError(NAME, "the dump ended without NLMSG_DONE")


def _check_control(chunk: bytes, offset: int, mtype: int) -> None:
    """An ``NLMSG_ERROR`` answer becomes a ``SourceError``; other control messages are skipped."""
    if mtype == NLMSG_ERROR:
        if offset + NLMSGHDR.size + 4 > len(chunk):
            raise ParseError(NAME, "truncated netlink error message")
        (code,) = struct.unpack_from("=i", chunk, offset + NLMSGHDR.size)
        raise SourceError(NAME, f"kernel refused the dump: errno {-code}")


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    raise ParseError(NAME, f"unknown address family {family} in inet_diag answer")


def parse_unix(chunks: Iterable[bytes], netns: int, into: SocketTable | None = None) -> SocketTable:
    """Rows from unix_diag answers, added to ``into`` or to a new table; an abstract name ``b"\\0name"``
    becomes ``"@name"``."""
    table = SocketTable(netns) if into is None else into
    add = table.add
    unpack_msg = UNIX_MSG.unpack_from
    for chunk, start, end in _messages(chunks, UNIX_MSG.size):
        _, ktype, kstate, inode = unpack_msg(chunk, start)
        path: str | None = None
        peer: int | None = None
        uid: int | None = None
        rqueue = wqueue = 0
        offset = start + UNIX_MSG.size
        while offset + RTATTR.size <= end:
            length, attr = RTATTR.unpack_from(chunk, offset)
            if length < RTATTR.size or offset + length > end:
                raise ParseError(NAME, f"unix_diag attribute of {length} bytes overruns its message")
            value = offset + RTATTR.size
            if length - RTATTR.size < _ATTR_SIZES.get(attr, 0):
                raise ParseError(NAME, f"unix_diag attribute {attr} of {length} bytes is too short")
            if attr == UNIX_DIAG_NAME:
                path = unix_path(chunk[value : offset + length])
            elif attr == UNIX_DIAG_PEER:
                peer = U32.unpack_from(chunk, value)[0]
            elif attr == UNIX_DIAG_RQLEN:
                rqueue, wqueue = U32X2.unpack_from(chunk, value)
            elif attr == UNIX_DIAG_UID:
                uid = U32.unpack_from(chunk, value)[0]
            offset += (length + 3) & ~3
        kind = UNIX_TYPES.get(ktype)
        if kind is None:
            raise ParseError(NAME, f"unknown unix socket type {ktype} for inode {inode}")
        add(Proto.UNIX, Family.UNIX, kind, datagram_state(kstate), None, None, None, None, path, peer, inode, uid,
            rqueue, wqueue)  # fmt: skip
    return table


def unix_path(raw: bytes) -> str | None:
    """``sun_path`` bytes as ``ss`` shows them.

    ``b"\\0x\\0y"`` → ``"@x@y"`` (abstract), ``b"/run/a.sock\\0"`` → ``"/run/a.sock"``.
    """
    if not raw:
        return None
    if raw[0] == 0:
        return "@" + raw[1:].replace(b"\0", b"@").decode("utf-8", "backslashreplace")
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def collect(ns: Namespace, protos: frozenset[Proto], proc_root: str = "/proc") -> SocketTable:
    """Every socket of ``protos`` in ``ns``, straight from the kernel."""
    del proc_root  # netlink does not read /proc
    try:
        with entered(ns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise SourceError(NAME, f"cannot open a sock_diag socket in netns {ns.inode}: {exc.strerror}") from exc
    table = SocketTable(ns.inode)
    try:
        with sock:
            for proto in (Proto.TCP, Proto.UDP):
                if proto in protos:
                    for family in (socket.AF_INET, socket.AF_INET6):
                        chunks = dump(sock, request(family, _PROTOCOLS[proto]))
                        parse_inet(chunks, ns.inode, proto, table)
            if Proto.UNIX in protos:
                parse_unix(dump(sock, request(socket.AF_UNIX)), ns.inode, table)
    except OSError as exc:
        raise SourceError(NAME, f"sock_diag dump failed in netns {ns.inode}: {exc.strerror}") from exc
    return table
