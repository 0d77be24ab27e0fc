"""Sockets from ``psutil.net_connections``: the portable source for systems without netlink or /proc.

psutil sees only the current network namespace, gives no inode, queue
lengths or Unix peers, and needs privileges to see other users' sockets.
Records get ``inode`` 0; owners come from psutil's pid directly.
"""

from __future__ import annotations

import socket

from sockfleet.agent.errors import SourceError
from sockfleet.agent.records import Family, Namespace, Proto, SockType, State
from sockfleet.agent.table import SocketTable

NAME = "psutil"
DESCRIPTION = "psutil.net_connections (other systems; current namespace, no inodes)"

_FAMILIES = {socket.AF_INET: Family.INET, socket.AF_INET6: Family.INET6, socket.AF_UNIX: Family.UNIX}
_TYPES = {
    socket.SOCK_STREAM: SockType.STREAM,
    socket.SOCK_DGRAM: SockType.DGRAM,
    socket.SOCK_SEQPACKET: SockType.SEQPACKET,
}
_STATES = {
    "ESTABLISHED": State.ESTABLISHED,
    "SYN_SENT": State.SYN_SENT,
    "SYN_RECV": State.SYN_RECV,
    "FIN_WAIT1": State.FIN_WAIT1,
    "FIN_WAIT2": State.FIN_WAIT2,
    "TIME_WAIT": State.TIME_WAIT,
    "CLOSE": State.CLOSE,
    "CLOSE_WAIT": State.CLOSE_WAIT,
    "LAST_ACK": State.LAST_ACK,
    "LISTEN": State.LISTEN,
    "CLOSING": State.CLOSING,
}


def collect(ns: Namespace, protos: frozenset[Proto], proc_root: str = "/proc") -> SocketTable:
    """The current namespace's sockets as psutil reports them."""
    del proc_root
    if not ns.current:
        raise SourceError(NAME, "psutil sees only the current network namespace")
    import psutil  # imported here: it costs 25 ms and Linux rarely needs it

    try:
        connections = psutil.net_connections("all")
    except (psutil.Error, OSError) as exc:
        raise SourceError(NAME, f"net_connections failed: {exc}") from exc
    rows = SocketTable(ns.inode)
    for conn in connections:
        family = _FAMILIES.get(conn.family)
        kind = _TYPES.get(conn.type)
        if family is None or kind is None:
            continue
        proto = Proto.UNIX if family is Family.UNIX else Proto.TCP if kind is SockType.STREAM else Proto.UDP
        if proto not in protos:
            continue
        if family is Family.UNIX:
            local, lport, remote, rport = None, None, None, None
            path = str(conn.laddr) or None
            state = State.UNCONN if conn.status == "NONE" else _STATES.get(conn.status, State.UNCONN)
        else:
            local, lport = conn.laddr if conn.laddr else ("0.0.0.0", 0)
            remote, rport = conn.raddr if conn.raddr else (None, None)
            path = None
            state = (
                _STATES.get(conn.status, State.UNCONN)
                if proto is Proto.TCP
                else (State.ESTABLISHED if conn.raddr else State.UNCONN)
            )
        rows.add(proto, family, kind, state, local, lport, remote, rport, path, None, 0, None, 0, 0)
    return rows
