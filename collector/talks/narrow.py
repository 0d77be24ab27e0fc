"""Which sockets can make the edges asked for: those of some hosts (or calling their addresses), those on a
port at either end, and those that had not ended by the moment asked about."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Table, literal, or_, select

from sockfleet.collector.schema import host_addresses, sockets
from sockfleet.connections import MAPPED


@dataclass(frozen=True, slots=True)
class Narrow:
    """The hosts (and the addresses they held) whose edges are asked for, and the server port; None: no limit."""

    refs: list[int] | None = None
    addresses: list[str] | None = None
    port: int | None = None

    def inet(self, table: Table = sockets) -> list[ColumnElement[bool]]:
        """For inet socket rows, or (``table`` flows) for flow rows, which have the same endpoint columns."""
        c = table.c
        conditions = []
        if self.refs is not None:
            conditions.append(or_(c.host_ref.in_(self.refs), c.remote_address.in_(self.addresses or [])))
        if self.port is not None:
            conditions.append(or_(c.local_port == self.port, c.remote_port == self.port))
        return conditions

    def unix(self) -> list[ColumnElement[bool]]:
        if self.port is not None:
            return [literal(False)]  # a Unix edge has no server port
        return [sockets.c.host_ref.in_(self.refs)] if self.refs is not None else []


def held_addresses(conn: Connection, refs: list[int], moment: datetime) -> list[str]:
    """The addresses these hosts held at the moment, as a socket may name them (a v4 one also v4-mapped)."""
    ha = host_addresses.c
    held = conn.execute(
        select(ha.address).where(
            ha.host_ref.in_(refs), ha.valid_from <= moment, or_(ha.valid_to.is_(None), ha.valid_to > moment)
        )
    ).scalars()
    out = set()
    for address in held:
        out.add(address)
        if "." in address:
            out.add(f"{MAPPED}{address}")
    return sorted(out)


def not_ended(start: datetime | None, table: Table = sockets) -> list[ColumnElement[bool]]:
    """Rows alive at ``start`` or after it are open or ended after it: what "alive" implies, said outright for
    PostgreSQL, which then plans over the day partitions (by ``valid_to``) from that day on only, and over the
    open rows' partition, rather than over every day of the history."""
    if start is None:
        return []
    return [or_(table.c.valid_to.is_(None), table.c.valid_to > start)]
