"""Typed records the agent produces: sockets, owners, processes and coverage.

Every record is a ``NamedTuple`` rather than a frozen dataclass, on purpose:
a snapshot of a busy host holds hundreds of thousands of sockets, and a frozen
dataclass costs about 3 µs to build (one ``object.__setattr__`` per field)
against 0.5 µs for a named tuple, which would dominate the whole scan.  The
records built a handful of times per scan are named tuples too, so that a
one-shot ``agent snapshot`` does not load ``dataclasses`` (and ``inspect``,
``ast``, ``dis`` ... with it) at every start.  They are just as immutable and typed.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    UNIX = "unix"


class Family(StrEnum):
    INET = "inet"
    INET6 = "inet6"
    UNIX = "unix"


class SockType(StrEnum):
    STREAM = "stream"
    DGRAM = "dgram"
    SEQPACKET = "seqpacket"


class State(StrEnum):
    """Socket states, named as the kernel names them (``include/net/tcp_states.h``).

    ``UNCONN`` is an unconnected UDP or Unix socket (the kernel's ``TCP_CLOSE``
    on those protocols).  A TCP socket in ``TCP_CLOSE`` keeps the name ``CLOSE``;
    ``ss`` prints it as ``UNCONN``.  The kernel's ``TCP_NEW_SYN_RECV`` request
    sockets are reported as ``SYN_RECV``, as ``ss`` does.
    """

    ESTABLISHED = "ESTABLISHED"
    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    FIN_WAIT1 = "FIN_WAIT1"
    FIN_WAIT2 = "FIN_WAIT2"
    TIME_WAIT = "TIME_WAIT"
    CLOSE = "CLOSE"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    LISTEN = "LISTEN"
    CLOSING = "CLOSING"
    UNCONN = "UNCONN"


# Kernel TCP state numbers (include/net/tcp_states.h) to names.
TCP_STATES: dict[int, State] = {
    1: State.ESTABLISHED,
    2: State.SYN_SENT,
    3: State.SYN_RECV,
    4: State.FIN_WAIT1,
    5: State.FIN_WAIT2,
    6: State.TIME_WAIT,
    7: State.CLOSE,
    8: State.CLOSE_WAIT,
    9: State.LAST_ACK,
    10: State.LISTEN,
    11: State.CLOSING,
    12: State.SYN_RECV,  # TCP_NEW_SYN_RECV: a request socket
}


def datagram_state(kernel_state: int) -> State:
    """UDP and Unix sockets reuse the TCP numbers: 1 is connected, 10 listening, else unconnected."""
    if kernel_state == 1:
        return State.ESTABLISHED
    if kernel_state == 10:
        return State.LISTEN
    return State.UNCONN


class SocketRecord(NamedTuple):
    """One socket as the kernel holds it, in one network namespace.

    Unix sockets have ``path`` (abstract names start with ``@``, unnamed
    sockets have ``None``) and ``peer_inode``; inet sockets have addresses and
    ports.  ``remote_address`` and ``remote_port`` are ``None`` when the socket
    has no peer.  ``uid`` is the socket's owner as the kernel records it
    (``None`` where the source cannot tell).
    """

    netns: int
    proto: Proto
    family: Family
    type: SockType
    state: State
    local_address: str | None
    local_port: int | None
    remote_address: str | None
    remote_port: int | None
    path: str | None
    peer_inode: int | None
    inode: int
    uid: int | None
    rx_queue: int
    tx_queue: int

    def is_listening(self) -> bool:
        """Whether the socket waits for peers: TCP/Unix LISTEN, unconnected UDP, bound Unix datagram."""
        if self.state is State.LISTEN:
            return True
        if self.state is not State.UNCONN:
            return False
        return self.proto is Proto.UDP or self.path is not None


class Process(NamedTuple):
    """A process that holds sockets: ``start_time`` is in clock ticks since boot."""

    pid: int
    name: str
    cmdline: str
    uid: int | None
    user: str | None
    start_time: int


class Namespace(NamedTuple):
    """A network namespace: its inode (the ``netns`` of each record) and a way in.

    ``path`` names a file that refers to the namespace (``/proc/PID/ns/net`` or a
    bind mount under ``/run/netns``); ``pid`` is a process inside it, used by the
    ``/proc`` source to read ``/proc/PID/net``.
    """

    inode: int
    path: str
    pid: int | None
    current: bool
    name: str | None = None


class SourceStatus(NamedTuple):
    """How one source fared in one namespace: it ran for ``seconds`` and gave ``records``, or failed with ``error``."""

    source: str
    netns: int
    ok: bool
    seconds: float
    records: int
    error: str | None = None


class Coverage(NamedTuple):
    """What a snapshot could and could not see.

    ``namespaces_unscanned`` maps a namespace (inode, or the path when even the
    inode is unknown) to the reason; ``processes_unreadable`` lists the pids
    whose descriptors could not be read, so their sockets have no owner.
    """

    sources: tuple[SourceStatus, ...]
    namespaces_scanned: tuple[int, ...]
    namespaces_unscanned: tuple[tuple[str, str], ...] = ()
    processes_unreadable: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        failed = any(not status.ok for status in self.sources)
        return not failed and not self.namespaces_unscanned and not self.processes_unreadable

    def as_dict(self) -> dict[str, Any]:
        """The coverage as JSON objects and arrays (``agent snapshot --coverage --format json``)."""
        return {
            "sources": [status._asdict() for status in self.sources],
            "namespaces_scanned": list(self.namespaces_scanned),
            "namespaces_unscanned": [list(pair) for pair in self.namespaces_unscanned],
            "processes_unreadable": list(self.processes_unreadable),
        }


class Snapshot(NamedTuple):
    """Every socket of one host at one moment, with owners and coverage.

    ``owners`` maps a socket inode to the pids holding it (lowest first), and
    ``processes`` maps those pids to their details, ``users`` each socket uid to
    its user name; ``addresses`` lists the interface addresses of the scanned
    namespaces (a running agent reports them with every scan).  A socket no process holds
    (a kernel socket, or one in ``TIME_WAIT``) has no entry in ``owners``.

    A scan's ``sockets`` are ``agent.table.Sockets``: packed rows that read as
    ``SocketRecord`` s one at a time, so that a large host's snapshot is never held
    as an object per socket.
    """

    host: str
    taken_at: float
    sockets: Sequence[SocketRecord]
    owners: dict[int, tuple[int, ...]]
    processes: dict[int, Process]
    users: dict[int, str | None]
    coverage: Coverage
    # (netns, interface, address) of every interface address in the scanned namespaces, when asked for.
    addresses: tuple[tuple[int, str, str], ...] | None = None
