"""Interface addresses of a network namespace, from a netlink ``RTM_GETADDR`` dump.

Each answer is ``nlmsghdr`` + ``ifaddrmsg`` (``u8 family, prefixlen, flags,
scope; u32 index``) + attributes; ``IFA_LOCAL`` (or ``IFA_ADDRESS``) holds the
address bytes and ``IFA_LABEL`` the IPv4 label (``include/uapi/linux/if_addr.h``).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from sockfleet.agent.errors import SourceError
from sockfleet.agent.netns import entered
from sockfleet.agent.records import Namespace

RTM_GETADDR = 22
RTM_NEWADDR = 20
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
NLMSG_ERROR, NLMSG_DONE = 2, 3
HEADER = struct.Struct("=IHHII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")


def parse(chunks: Iterable[bytes]) -> list[tuple[int, str]]:
    """(interface index, address) of each ``RTM_NEWADDR`` answer, up to ``NLMSG_DONE``."""
    found: list[tuple[int, str]] = []
    for chunk in chunks:
        offset = 0
        while offset + HEADER.size <= len(chunk):
            length, kind, _, _, _ = HEADER.unpack_from(chunk, offset)
            if length < HEADER.size or offset + length > len(chunk):
                raise SourceError("addresses", f"netlink message of {length} bytes overruns its datagram")
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                raise SourceError("addresses", "the kernel refused the address dump")
            if kind == RTM_NEWADDR and length >= HEADER.size + IFADDRMSG.size:
                family, _, _, _, index = IFADDRMSG.unpack_from(chunk, offset + HEADER.size)
                attrs: dict[int, bytes] = {}
                at = offset + HEADER.size + IFADDRMSG.size
                while at + RTATTR.size <= offset + length:
                    alen, atype = RTATTR.unpack_from(chunk, at)
                    if alen < RTATTR.size:
                        break
                    attrs[atype] = chunk[at + RTATTR.size : at + alen]
                    at += (alen + 3) & ~3
                raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
                if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
                    found.append((index, socket.inet_ntop(family, raw)))
            offset += (length + 3) & ~3
    return found


def collect(ns: Namespace) -> list[tuple[str, str]]:
    """(interface name, address) of every address in ``ns``."""
    try:
        with entered(ns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            with sock:
                request = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                sock.send(HEADER.pack(HEADER.size + len(request), RTM_GETADDR, 0x301, 1, 0) + request)
                chunks = []
                while True:
                    chunk = sock.recv(1 << 16)
                    chunks.append(chunk)
                    if len(chunk) >= HEADER.size and _done(chunk):
                        break
                pairs = parse(chunks)
                names = {index: _name(index) for index in {index for index, _ in pairs}}
    except OSError as exc:
        raise SourceError("addresses", f"cannot list addresses of netns {ns.inode}: {exc.strerror}") from exc
    return [(names[index], address) for index, address in pairs]


def _done(chunk: bytes) -> bool:
    offset = 0
    while offset + HEADER.size <= len(chunk):
        length, kind, _, _, _ = HEADER.unpack_from(chunk, offset)
        if kind in (NLMSG_DONE, NLMSG_ERROR) or length < HEADER.size:
            return True
        offset += (length + 3) & ~3
    return False


def _name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"  # the interface went away during the dump
