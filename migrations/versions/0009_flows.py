"""Flows: connected inet sockets folded per host when stored, so that "who talks to whom at T" reads a
few rows per host; and a partial index for the Unix sockets that ``talks`` pairs.

Existing history is folded here with the rule the store applied to new messages when this revision was
written (``collector.flows``, frozen below): every socket row once, in the order the rows opened.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 10_000


def upgrade() -> None:
    op.add_column("sockets", sa.Column("flow", sa.String(length=32), nullable=True))
    op.create_index(
        "ix_sockets_unix",
        "sockets",
        ["span", "valid_from", "valid_to"],
        sqlite_where=sa.text("proto = 'unix'"),
        postgresql_where=sa.text("proto = 'unix'"),
    )
    table = op.create_table(
        "flows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_ref", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("netns", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.String(length=8), nullable=False),
        sa.Column("role", sa.String(length=1), nullable=False),
        sa.Column("process", sa.String(length=255), nullable=True),
        sa.Column("local_address", sa.String(length=64), nullable=True),
        sa.Column("local_port", sa.Integer(), nullable=True),
        sa.Column("remote_address", sa.String(length=64), nullable=True),
        sa.Column("remote_port", sa.Integer(), nullable=True),
        sa.Column("connections", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_to", sa.DateTime(), nullable=True),
        sa.Column("span", sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(["host_ref"], ["hosts.id"], name="fk_flows_host_ref_hosts", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_flows"),
    )
    _fold_history(table)
    op.create_index("ix_flows_span_valid_from_valid_to", "flows", ["span", "valid_from", "valid_to"])
    op.create_index("ix_flows_host_ref_valid_from", "flows", ["host_ref", "valid_from"])
    op.create_index(
        "uq_flows_open_key",
        "flows",
        ["host_ref", "key"],
        unique=True,
        sqlite_where=sa.text("valid_to IS NULL"),
        postgresql_where=sa.text("valid_to IS NULL"),
    )


def _fold_history(table: sa.Table) -> None:
    conn = op.get_bind()
    s = sa.table(
        "sockets",
        sa.column("valid_from", sa.DateTime()),
        sa.column("valid_to", sa.DateTime()),
        *(
            sa.column(name)
            for name in (
                "id",
                "host_ref",
                "netns",
                "proto",
                "state",
                "process",
                "local_address",
                "local_port",
                "remote_address",
                "remote_port",
                "flow",
            )
        ),
    )
    c = s.c
    listening = sa.or_(c.state == "LISTEN", sa.and_(c.proto == "udp", c.state == "UNCONN"))
    rows = conn.execute(
        sa.select(
            c.id,
            c.host_ref,
            c.valid_from,
            c.valid_to,
            c.netns,
            c.proto,
            c.state,
            c.process,
            c.local_address,
            c.local_port,
            c.remote_address,
            c.remote_port,
        )
        .where(c.proto != "unix", sa.or_(c.remote_address.is_not(None), listening))
        .order_by(c.valid_from, sa.case((listening, 0), else_=1), c.id),
        execution_options={"stream_results": True, "yield_per": BATCH},
    )
    versions: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    setting = sa.update(s).where(c.id == sa.bindparam("socket")).values(flow=sa.bindparam("key"))
    builder = Builder(versions.append)
    for row in rows:
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
            keys.append({"socket": row.id, "key": key})
        if len(keys) >= BATCH or len(versions) >= BATCH:
            _write(conn, setting, keys, table, versions)
    builder.finish()
    _write(conn, setting, keys, table, versions)


def _write(
    conn: sa.Connection, setting: Any, keys: list[dict[str, Any]], table: sa.Table, versions: list[dict[str, Any]]
) -> None:
    if keys:
        conn.execute(setting, keys)
    if versions:
        conn.execute(sa.insert(table), versions)
    keys.clear()
    versions.clear()


def downgrade() -> None:
    op.drop_table("flows")
    op.drop_index("ix_sockets_unix", table_name="sockets")
    op.drop_column("sockets", "flow")


# The rules below are collector/flows.py and collector/spans.py as they were when this revision was written.

LIMITS = tuple(timedelta(minutes=4**k) for k in range(11))
UNBOUNDED = len(LIMITS)


def span_of(valid_from: datetime, valid_to: datetime | None) -> int | None:
    if valid_to is None:
        return None
    life = valid_to - valid_from
    for index, limit in enumerate(LIMITS):
        if life <= limit:
            return index
    return UNBOUNDED


EPHEMERAL = (32768, 60999)
WILDCARDS = ("0.0.0.0", "::")
SERVED, CALLING, NOT_FOLDED = "s", "c", "n"
# Identity of a flow within its host, in the order of the flows table's columns.
IDENTITY_COLUMNS = ("netns", "proto", "role", "process", "local_address", "local_port", "remote_address", "remote_port")
# A listener as a flow's role needs it: namespace, protocol, port, address (IPv4-mapped made plain).
Listener = tuple[int, str, int, str]


def plain(address: str | None) -> str | None:
    """``::ffff:10.0.0.5`` → ``10.0.0.5``: an IPv4 peer of an IPv6 socket is that IPv4 address."""
    if address is not None and address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def ephemeral(port: int | None) -> bool:
    return port is not None and EPHEMERAL[0] <= port <= EPHEMERAL[1]


def is_listener(proto: str, state: str) -> bool:
    """TCP LISTEN, or unconnected UDP: what ``talks`` takes as a listener."""
    return state == "LISTEN" or (proto == "udp" and state == "UNCONN")


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
    if proto == "unix" or remote_address is None or state in ("TIME_WAIT", "LISTEN"):
        return None
    laddr, raddr = plain(local_address), plain(remote_address)
    port = local_port or 0
    if any(listening((netns, proto, port, address)) for address in (laddr or "", *WILDCARDS)):
        return (netns, proto, SERVED, process, laddr, local_port, raddr, None)
    if ephemeral(local_port) and not ephemeral(remote_port):
        return (netns, proto, CALLING, process, laddr, None, raddr, remote_port)
    return (netns, proto, NOT_FOLDED, process, laddr, local_port, raddr, remote_port)


def digest(flow: tuple[Any, ...]) -> str:
    """The flow's key within its host (``flows.key``, ``sockets.flow``)."""
    text = "\x1f".join("" if value is None else str(value) for value in flow)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Open:
    """A flow's open row: its identity, number of open sockets, and times.  (A plain class: Alembic loads a
    revision without registering its module, which a dataclass needs.)"""

    __slots__ = ("connections", "flow", "since", "valid_from")

    def __init__(self, flow: tuple[Any, ...], connections: int, since: datetime, valid_from: datetime) -> None:
        self.flow = flow
        self.connections = connections
        self.since = since
        self.valid_from = valid_from


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
        "span": span_of(row.valid_from, valid_to),
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
        if is_listener(proto, state):
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
