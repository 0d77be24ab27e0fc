"""The connection rules, each stated once: as a Python predicate and as the SQL expression made from the same
constants, so that the store, the flows builder, ``talks``, ``ports`` and ``audit`` can never disagree.

* **v4-mapped**: ``::ffff:10.0.0.5`` is the IPv4 peer ``10.0.0.5`` of an IPv6 socket (``plain``).
* **loopback**: 127/8 and ``::1``, v4-mapped or not (``loopback``).
* **exposed**: an inet socket not bound to loopback; one without a local address counts as exposed
  (``exposed``): an audit errs on the side of a finding.
* **ephemeral**: a port the kernel hands out to callers, 32768-60999 by default (``ephemeral``).
* **wildcards**: ``0.0.0.0`` and ``::``, on which a listener takes every address (``WILDCARDS``).
* **connected**: one end of a connection: an inet socket with a peer, TCP in any state but ``TIME_WAIT``
  (whose process has let go) and ``LISTEN`` (``connected``).
* **accepts**: what can be the server end of a connection: TCP ``LISTEN``, unconnected UDP (``accepts``).
* **listening**: what ``ports`` lists: TCP and Unix ``LISTEN``, unconnected UDP, and Unix datagram
  sockets bound to a path (``listening``).
* **server side**: of the two ends of a connection, the one with a listener serves; without one, the end
  not on an ephemeral port; else the lower port (``serving``); ``DIRECTIONS`` names how it was decided.

The SQL forms take columns (of ``sockets`` or anything with the same names) and write literal values where
a partial index must see them (SQLite applies a partial index only to a query that names its condition).
The constants and plain predicates the agent needs too live in ``sockfleet.connections``.
Migrations do not import this module: each revision keeps the rules as they were when it was written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, not_, or_

from sockfleet.connections import EPHEMERAL, GONE, MAPPED, ephemeral, plain

LOOPBACK_V4, LOOPBACK_V6 = "127.", "::1"
LISTEN, UNCONN = "LISTEN", "UNCONN"
# Socket states, as stored and as ``--state`` takes them.
STATES = (
    "LISTEN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "CLOSING",
    "UNCONN",
)
# How the server side of an edge was decided, weakest first; an edge takes its strongest connection's.
LOWER_PORT, EPHEMERAL_PORT, LISTENER, UNIX_PAIR, UNIX_PATH = 1, 2, 3, 4, 5
DIRECTIONS = {
    LOWER_PORT: "lower port",
    EPHEMERAL_PORT: "ephemeral port",
    LISTENER: "listener",
    UNIX_PAIR: "unix pair",
    UNIX_PATH: "unix path",
}


def plain_sql(column: Any) -> ColumnElement[Any]:
    return case((column.like(f"{MAPPED}%.%"), func.substr(column, len(MAPPED) + 1)), else_=column)


def loopback(address: str | None) -> bool:
    """127/8 or ``::1``, v4-mapped or not."""
    address = plain(address) or ""
    return address.startswith(LOOPBACK_V4) or address == LOOPBACK_V6


def loopback_sql(column: Any) -> ColumnElement[bool]:
    """The same for a column already made plain (``plain_sql``)."""
    return or_(column.like(f"{LOOPBACK_V4}%"), column == LOOPBACK_V6)


def exposed(proto: str, local_address: str | None) -> bool:
    """An inet socket bound beyond loopback (or to no address the agent could tell)."""
    return proto != "unix" and not loopback(local_address)


def exposed_sql(c: Any) -> ColumnElement[bool]:
    address = func.coalesce(c.local_address, "")
    return and_(
        c.proto != "unix",
        not_(address.like(f"{LOOPBACK_V4}%")),
        address != LOOPBACK_V6,
        not_(address.like(f"{MAPPED}{LOOPBACK_V4}%")),
    )


def ephemeral_sql(column: Any) -> ColumnElement[int]:
    """1 for a port in the ephemeral range, else 0 (a flag SQL can compare)."""
    return case((column.between(*EPHEMERAL), 1), else_=0)


def connected(proto: str, state: str, remote_address: str | None) -> bool:
    """One end of a connection: an inet socket with a peer, not in TIME_WAIT (nor LISTEN)."""
    return proto != "unix" and remote_address is not None and state not in GONE


def connected_sql(c: Any) -> ColumnElement[bool]:
    return and_(c.proto != "unix", c.remote_address.is_not(None), c.state.not_in(GONE))


def accepts(proto: str, state: str) -> bool:
    """An inet socket that can be the server end of a connection: TCP LISTEN, or unconnected UDP."""
    return proto != "unix" and (state == LISTEN or (proto == "udp" and state == UNCONN))


def accepts_sql(c: Any) -> ColumnElement[bool]:
    return and_(c.proto != "unix", or_(c.state == LISTEN, c.proto == "udp"), waiting_sql(c))


def listening(proto: str, state: str, kind: str, path: str | None) -> bool:
    """What ``ports`` lists: TCP and Unix LISTEN, unconnected UDP, Unix datagram sockets bound to a path."""
    if state == LISTEN:
        return True
    return state == UNCONN and (proto == "udp" or (proto == "unix" and kind == "dgram" and path is not None))


def listening_sql(c: Any) -> ColumnElement[bool]:
    return and_(
        waiting_sql(c),
        or_(c.state == LISTEN, c.proto == "udp", and_(c.proto == "unix", c.type == "dgram", c.path.is_not(None))),
    )


def waiting_sql(c: Any) -> ColumnElement[bool]:
    """``state IN ('LISTEN', 'UNCONN')`` with literal values: the condition of the listeners' partial indexes."""
    states: ColumnElement[bool] = c.state.in_([literal_column(f"'{LISTEN}'"), literal_column(f"'{UNCONN}'")])
    return states


def serving(local_listens: bool, remote_listens: bool, local_port: int, remote_port: int) -> tuple[bool, int]:
    """Whether the local end serves, and how that was decided (a ``DIRECTIONS`` key)."""
    if local_listens != remote_listens:
        return local_listens, LISTENER
    if ephemeral(local_port) != ephemeral(remote_port):
        return ephemeral(remote_port), EPHEMERAL_PORT
    return local_port < remote_port, LOWER_PORT


def serving_sql(
    local_listens: ColumnElement[bool],
    remote_listens: ColumnElement[bool],
    local_port: Any,
    remote_port: Any,
    role: Any = None,
) -> tuple[ColumnElement[int], ColumnElement[int]]:
    """``serving`` in SQL: 1 when the local end serves, and how that was decided.

    A flow's role, decided when its sockets opened (``collector.flows``), comes first: ``s`` served,
    ``c`` calling.
    """
    local_ephemeral, remote_ephemeral = ephemeral_sql(local_port), ephemeral_sql(remote_port)
    one_listens = or_(and_(local_listens, not_(remote_listens)), and_(remote_listens, not_(local_listens)))
    serving_end: list[Any] = [
        (and_(local_listens, not_(remote_listens)), 1),
        (and_(remote_listens, not_(local_listens)), 0),
        (local_ephemeral != remote_ephemeral, remote_ephemeral),
        (local_port < remote_port, 1),
    ]
    deciding: list[Any] = [(one_listens, LISTENER), (local_ephemeral != remote_ephemeral, EPHEMERAL_PORT)]
    if role is not None:
        serving_end = [(role == "s", 1), (role == "c", 0), *serving_end]
        deciding = [
            (or_(role == "s", and_(role == "c", remote_listens)), LISTENER),
            (role == "c", EPHEMERAL_PORT),
            *deciding,
        ]
    return case(*serving_end, else_=0), case(*deciding, else_=LOWER_PORT)
