"""Rows in bulk, and the flows they move: what applying a snapshot and applying a delta share.

New socket rows go in bulk: ``executemany`` of one constant INSERT on SQLite, ``COPY`` on PostgreSQL.
Each socket that opens or closes moves the count of its flow (``collector.flows``): a flow whose count
changes has its open row closed and a new one opened, at the message's time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from sockfleet.collector import convert, flows, rules, spans
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.store.statements import AT, CLOSE_FLOWS, FLOWS_BULK, LISTENING, SOCKETS_BULK, chunks

Listeners = frozenset[flows.Listener]
# A row's fields that ``flows.identity`` takes, in its order.
_FLOW_FIELDS: Callable[[tuple[Any, ...]], tuple[Any, ...]] = itemgetter(
    *(
        AT[name]
        for name in (
            "netns",
            "proto",
            "state",
            "process",
            "local_address",
            "local_port",
            "remote_address",
            "remote_port",
        )
    )
)


class Resync(Exception):
    """Raised inside a transaction to roll it back and ask the agent for a Snapshot."""


class Writer:
    """Writes rows to one database, in bulk where there are many."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def open_rows(
        self,
        conn: Connection,
        ref: int,
        rows: Sequence[convert.SocketRow],
        moment: datetime,
        left: list[Row[Any]],
        listening: Listeners | None,
    ) -> Listeners | None:
        """Open rows for ``rows``, and move the host's flows by the sockets opened and those closed (``left``:
        their flow, protocol and state).  ``listening``: the host's open listeners before the message, if known;
        returns them after it, if known."""
        if any(rules.accepts(row.proto, row.state) for row in left):
            listening = None
        stamp = self.stamp(moment)
        values = [(ref, stamp, *row.values()) for row in rows]
        opened, listening = self._flows(conn, ref, values, moment, [row.flow for row in left], listening)
        if values:
            self.write(conn, SOCKETS_BULK, [(*value, key) for value, key in zip(values, opened, strict=True)])
        return listening

    def _flows(
        self,
        conn: Connection,
        ref: int,
        values: list[tuple[Any, ...]],
        moment: datetime,
        left: list[str | None],
        listening: Listeners | None,
    ) -> tuple[list[str | None], Listeners | None]:
        """The flow of each socket opening (None: of no flow), after moving the host's flows; see collector.flows.
        Also the host's open listeners after the message, when known."""
        connected = [v for v in values if v[AT["remote_address"]] is not None and v[AT["proto"]] != "unix"]
        if connected and listening is None:
            listening = frozenset(flows.listener_of(*row) for row in conn.execute(LISTENING, {"ref": ref}))
        if listening is not None:
            listening |= {
                flows.listener_of(v[AT["netns"]], v[AT["proto"]], v[AT["local_address"]], v[AT["local_port"]])
                for v in values
                if rules.accepts(v[AT["proto"]], v[AT["state"]])
            }
        changes: dict[str, int] = {}
        for key in left:
            if key is not None:
                changes[key] = changes.get(key, 0) - 1
        if not connected and not changes:
            return [None] * len(values), listening
        identities: dict[str, tuple[Any, ...]] = {}
        opened = file_flows(values, listening or frozenset(), changes, identities)
        self.move_flows(conn, ref, changes, identities, moment)
        return opened, listening

    def move_flows(
        self,
        conn: Connection,
        ref: int,
        changes: dict[str, int],
        identities: dict[str, tuple[Any, ...]],
        moment: datetime,
    ) -> None:
        """Close the open rows of the flows whose number of open sockets changes, and open their new rows."""
        moving = [key for key, change in changes.items() if change]
        if not moving:
            return
        current = {}
        for chunk in chunks(moving):
            params = {"ref": ref, "keys": list(chunk), "moment": moment, **spans.cutoffs(moment)}
            for row in conn.execute(CLOSE_FLOWS, params):
                current[row[0]] = flows.Open(tuple(row[1:-3]), row[-3], row[-2], row[-1])
        _, new = flows.advance(current, {key: changes[key] for key in moving}, identities, moment)
        if new:
            stamp = self.stamp
            rows = [(ref, key, *row.flow, row.connections, stamp(row.since), stamp(row.valid_from)) for key, row in new]
            self.write(conn, FLOWS_BULK, rows)

    def stamp(self, moment: datetime) -> datetime | str:
        """A time for the bulk statements, which bypass SQLAlchemy's types: on SQLite, written as SQLAlchemy
        writes (and binds) times, so that text comparisons in queries hold at equal times too."""
        return moment if self.postgres else moment.isoformat(" ", timespec="microseconds")

    def write(self, conn: Connection, statements: tuple[str, str], values: list[tuple[Any, ...]]) -> None:
        """New rows in bulk: ``executemany`` of one constant INSERT on SQLite, ``COPY`` on PostgreSQL."""
        try:
            if self.postgres:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                with cursor.copy(statements[1]) as copy:
                    for value in values:
                        copy.write_row(value)
            else:
                conn.exec_driver_sql(statements[0], values)
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError):  # uq_sockets_open_key: the message opens a socket held open
                raise Resync("a message opens a socket the collector already holds") from exc
            if isinstance(exc, DataError):
                raise RejectedMessage(f"the database refused a value: {' '.join(str(exc.orig).split())[:300]}") from exc
            raise
        except Exception as exc:
            _translated(exc, statements[1])
            raise


def _translated(exc: Exception, statement: str) -> None:
    """COPY goes to the driver itself, whose errors SQLAlchemy has not translated: translate them here."""
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "23505":
        raise Resync("a message opens a socket the collector already holds") from exc
    if state.startswith("22"):
        raise RejectedMessage(f"the database refused a value: {' '.join(str(exc).split())[:300]}") from exc
    if getattr(exc, "sqlstate", None) is not None or type(exc).__module__.startswith("psycopg"):
        raise OperationalError(statement, None, exc) from exc


def file_flows(
    values: list[tuple[Any, ...]], listening: Listeners, changes: dict[str, int], identities: dict[str, tuple[Any, ...]]
) -> list[str | None]:
    """The flow key of each socket row opening (``values``: as written, see ``statements.AT``), counted in
    ``changes`` (one more open socket each) and named in ``identities``."""
    holds = listening.__contains__
    opened: list[str | None] = []
    for v in values:
        netns, proto, state, process, laddr, lport, raddr, rport = _FLOW_FIELDS(v)
        flow = flows.identity(netns, proto, state, process, laddr, lport, raddr, rport, holds)
        if flow is None:
            opened.append(None)
            continue
        key = flows.digest(flow)
        identities[key] = flow
        changes[key] = changes.get(key, 0) + 1
        opened.append(key)
    return opened
