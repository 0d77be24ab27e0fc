"""Rows in bulk, and the flows they move: what applying a snapshot and applying a delta share.

New socket rows go in bulk: ``executemany`` of one constant INSERT on SQLite, ``COPY`` on PostgreSQL.
Each socket that opens or closes moves the count of its flow (``collector.flows``): a flow whose count
changes has its open row closed and a new one opened, at the message's time.

On PostgreSQL each statement is a round trip to the server, so a message applied in one transaction
(``Writer.batched``) saves them: the writes whose answer it does not need (a few new rows, the host's state,
the observation) wait (``later``) and go at the end in one pipeline with the COMMIT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Boolean, Connection, Engine, Executable, Row
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from sockfleet.collector import convert, flows, rules, spans
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.store.statements import (
    AT,
    CLOSE_FLOWS,
    CLOSE_FLOWS_ANY,
    CLOSE_IDS,
    CLOSE_IDS_ANY,
    CLOSE_KEYS,
    CLOSE_KEYS_ANY,
    FLOWS_BULK,
    HOST_FOR_UPDATE,
    HOSTS_FOR_UPDATE,
    LISTENING,
    SOCKETS_BULK,
    Bulk,
    chunks,
)

# A parameter cast to an array (``%(keys)s::VARCHAR[]``), which the driver then sends in binary (``%(keys)b``).
_ARRAY_MARK = re.compile(r"%\((\w+)\)s::(?=[A-Z ]+\[\])")
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


COPY_ROWS = 64  # fewer new rows than this go as an INSERT in the closing pipeline rather than a COPY of their own
_PENDING = "sockfleet.pending"  # key, in the pooled connection's ``info``, of the writes that wait


class Resync(Exception):
    """Raised inside a transaction to roll it back and ask the agent for a Snapshot."""


class Writer:
    """Writes rows to one database, in bulk where there are many."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        # Lists of keys and ids go as one array on PostgreSQL (see ``statements._among``).
        self.close_keys = CLOSE_KEYS_ANY if self.postgres else CLOSE_KEYS
        self.close_ids = CLOSE_IDS_ANY if self.postgres else CLOSE_IDS
        self.close_flows = CLOSE_FLOWS_ANY if self.postgres else CLOSE_FLOWS
        self._texts: dict[tuple[int, tuple[str, ...]], str | None] = {}
        self._fetched: dict[int, tuple[str, dict[str, Any]]] = {}

    @contextmanager
    def batched(self, conn: Connection) -> Iterator[None]:
        """The writes of one message's transaction: on PostgreSQL those that ``later`` holds go, when the block
        ends without an error, in one pipeline with the transaction's COMMIT (the block must be the last
        thing in the transaction).  Raises ``Resync`` or ``RejectedMessage`` as ``write`` does."""
        if not self.postgres:
            yield
            return
        pending: list[Callable[[], object]] = []
        conn.info[_PENDING] = pending
        try:
            yield
        finally:
            conn.info.pop(_PENDING, None)
        if not pending:
            return
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            with raw.pipeline(), raw.cursor() as cursor:
                for run in pending:
                    run()
                # Ends the transaction in the same round trip; the engine's own COMMIT then finds nothing to do.
                cursor.execute("COMMIT")
        except Exception as exc:
            _translated(exc, "COMMIT")
            raise

    def later(self, conn: Connection, statement: Executable, params: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Run a statement whose answer the message does not need: at once, or at the end of ``batched``
        (straight through the driver when its values need no conversion by SQLAlchemy)."""
        pending: list[Callable[[], object]] | None = conn.info.get(_PENDING)
        if pending is None:
            conn.execute(statement, params)
            return
        rows = params if isinstance(params, list) else [params]
        sql = self._driver_text(statement, rows[0]) if rows else None
        if sql is None:
            pending.append(lambda: conn.execute(statement, params))
            return
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        pending.append(lambda: cursor.executemany(sql, rows) if len(rows) > 1 else cursor.execute(sql, rows[0]))

    def _driver_text(self, statement: Executable, params: dict[str, Any]) -> str | None:
        """The statement's text for the driver, for these parameters' names; None when SQLAlchemy converts some
        value on its way (then it runs through SQLAlchemy).  Made once for each statement and set of names."""
        key = (id(statement), tuple(params))
        if key not in self._texts:
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=list(params))  # type: ignore[attr-defined]
            # Booleans' processor only checks that a value is one; the store's are.
            converted = [
                name for name in compiled._bind_processors if not isinstance(compiled.binds[name].type, Boolean)
            ]
            plain = not converted and set(compiled.binds) <= set(params)
            self._texts[key] = str(compiled) if plain else None
        return self._texts[key]

    def locked_host(self, conn: Connection, ref: int) -> Any:
        """The host's state (``host_state``), locked until the transaction ends (``HOST_FOR_UPDATE``)."""
        if not self.postgres:
            return conn.execute(HOST_FOR_UPDATE, {"ref": ref}).one()
        rows = self.fetch(conn, HOST_FOR_UPDATE, {"ref": ref})
        if not rows:
            raise LookupError(f"no host with id {ref}")
        return rows[0]

    def locked_hosts(self, conn: Connection, refs: list[int]) -> dict[int, Any]:
        """Hosts' states by id (PostgreSQL), locked until the transaction ends, in the order of ``refs``
        (``statements.HOSTS_FOR_UPDATE``)."""
        return {row.host_ref: row for row in self.fetch(conn, HOSTS_FOR_UPDATE, {"refs": refs})}

    def fetch(self, conn: Connection, statement: Executable, params: dict[str, Any]) -> list[Any]:
        """A statement's rows (named tuples), straight through the driver (PostgreSQL): for statements whose
        values need no conversion by SQLAlchemy.

        Never in a pipeline with the transaction's BEGIN, though that would save a round trip: the driver ends
        a pipeline with a flush request after its sync, and PostgreSQL's idle-in-transaction timer, armed at
        the sync, is disarmed by that flush until the next statement.  A collector frozen right after locking
        its hosts would then hold their rows (and keep them from every other collector) until it woke."""
        raw = conn.connection.driver_connection
        assert raw is not None
        sql, fixed = self._text(statement)
        try:
            with raw.cursor(row_factory=namedtuple_row) as cursor:
                cursor.execute(sql, {**fixed, **params} if fixed else params)
                rows: list[Any] = cursor.fetchall()
                return rows
        except Exception as exc:
            _translated(exc, sql)
            raise

    def returning(self, conn: Connection, statement: Executable, params: dict[str, Any]) -> list[Any]:
        """The rows a statement returns: straight through the driver on PostgreSQL (``fetch``: the statement's
        values and rows need no conversion by SQLAlchemy), through SQLAlchemy on SQLite."""
        if self.postgres:
            return self.fetch(conn, statement, params)
        return list(conn.execute(statement, params))

    def _text(self, statement: Executable) -> tuple[str, dict[str, Any]]:
        """A statement's text for this database's driver, and the values of the parameters the statement itself
        holds (constants SQLAlchemy binds, as a closed row's span class); made once.  Arrays go binary: the
        driver sends 500 keys as text in 565 µs, binary in 68 µs."""
        made = self._fetched.get(id(statement))
        if made is None:
            compiled = statement.compile(dialect=self.engine.dialect)  # type: ignore[attr-defined]
            fixed = {name: value for name, value in compiled.params.items() if value is not None}
            made = self._fetched[id(statement)] = (_ARRAY_MARK.sub(r"%(\1)b::", str(compiled)), fixed)
        return made

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
        values = self.socket_values(ref, rows, moment)
        listening = still_listening(left, listening)
        if listening is None and connects(values):
            listening = self.listeners(conn, ref)
        moving = plan_flows(values, [row.flow for row in left], listening)
        self.move_flows(conn, ref, moving.changes, moving.identities, moment)
        if values:
            self.write(conn, SOCKETS_BULK, moving.rows(values))
        return moving.listening

    def socket_values(self, ref: int, rows: Sequence[convert.SocketRow], moment: datetime) -> list[tuple[Any, ...]]:
        """New socket rows of host ``ref`` opening at ``moment``, as written (``statements.AT``) but for their flow."""
        stamp = self.stamp(moment)
        return [(ref, stamp, *row.values) for row in rows]

    @staticmethod
    def listeners(conn: Connection, ref: int) -> Listeners:
        """The host's open listeners, read from its open rows."""
        return frozenset(flows.listener_of(*row) for row in conn.execute(LISTENING, {"ref": ref}))

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
            for row in self.returning(conn, self.close_flows, params):
                current[row[0]] = open_flow(row)
        rows = self.new_flows(ref, current, changes, identities, moment)
        if rows:
            self.write(conn, FLOWS_BULK, rows)

    def new_flows(
        self,
        ref: int,
        current: dict[str, flows.Open],
        changes: dict[str, int],
        identities: dict[str, tuple[Any, ...]],
        moment: datetime,
    ) -> list[tuple[Any, ...]]:
        """The new open rows of the host's flows that ``changes`` moves (``current``: their rows just closed), as
        ``FLOWS_BULK`` writes them."""
        _, new = flows.advance(current, {key: change for key, change in changes.items() if change}, identities, moment)
        stamp = self.stamp
        return [(ref, key, *row.flow, row.connections, stamp(row.since), stamp(row.valid_from)) for key, row in new]

    def stamp(self, moment: datetime) -> datetime | str:
        """A time for the bulk statements, which bypass SQLAlchemy's types: on SQLite, written as SQLAlchemy
        writes (and binds) times, so that text comparisons in queries hold at equal times too."""
        return moment if self.postgres else moment.isoformat(" ", timespec="microseconds")

    def write(self, conn: Connection, statements: Bulk, values: list[tuple[Any, ...]]) -> None:
        """New rows in bulk: ``executemany`` of one constant INSERT on SQLite, ``COPY`` on PostgreSQL (a few
        rows in a ``batched`` transaction: an INSERT in its closing pipeline)."""
        pending: list[Callable[[], object]] | None = conn.info.get(_PENDING) if self.postgres else None
        if pending is not None and len(values) < COPY_ROWS:
            insert = statements.insert.replace("?", "%s")  # the text holds no other "?": column names and marks
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            pending.append(lambda: cursor.executemany(insert, values))
            return
        try:
            if self.postgres:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                with cursor.copy(statements.copy) as copy:
                    copy.set_types(statements.types)
                    for value in values:
                        copy.write_row(value)
            else:
                conn.exec_driver_sql(statements.insert, values)
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError):  # uq_sockets_open_key: the message opens a socket held open
                raise Resync("a message opens a socket the collector already holds") from exc
            if isinstance(exc, DataError):
                raise RejectedMessage(f"the database refused a value: {' '.join(str(exc.orig).split())[:300]}") from exc
            raise
        except Exception as exc:
            _translated(exc, statements.copy)
            raise


def _translated(exc: Exception, statement: str) -> None:
    """COPY and pipelines go to the driver itself, whose errors SQLAlchemy has not translated: translate them
    here (and those SQLAlchemy translated, which a pipeline may raise for a statement run before)."""
    if isinstance(exc, DBAPIError):
        if isinstance(exc, IntegrityError):  # uq_sockets_open_key, as ``write`` says
            raise Resync("a message opens a socket the collector already holds") from exc
        if isinstance(exc, DataError):
            raise RejectedMessage(f"the database refused a value: {' '.join(str(exc.orig).split())[:300]}") from exc
        return
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "23505":
        raise Resync("a message opens a socket the collector already holds") from exc
    if state.startswith("22"):
        raise RejectedMessage(f"the database refused a value: {' '.join(str(exc).split())[:300]}") from exc
    if getattr(exc, "sqlstate", None) is not None or type(exc).__module__.startswith("psycopg"):
        raise OperationalError(statement, None, exc) from exc


def open_flow(row: Sequence[Any]) -> flows.Open:
    """A flow's open row as closing it returns it (``statements.CLOSE_FLOWS``: its key first)."""
    return flows.Open(tuple(row[1:-3]), row[-3], row[-2], row[-1])


def still_listening(left: Sequence[Any], listening: Listeners | None) -> Listeners | None:
    """The host's known listeners, unless a message closes one of them (``left``: rows closed, with their
    protocol and state): then they are read again."""
    if any(rules.accepts(row.proto, row.state) for row in left):
        return None
    return listening


def connects(values: list[tuple[Any, ...]]) -> bool:
    """Whether any new socket row is a connected inet socket, whose flow's role needs the host's listeners."""
    return any(v[AT["remote_address"]] is not None and v[AT["proto"]] != "unix" for v in values)


@dataclass(slots=True)
class Moving:
    """How new socket rows move their host's flows: the flow of each row (None: of no flow), each flow's
    change in open sockets and its identity, and the host's open listeners after them, when known."""

    opened: list[str | None]
    changes: dict[str, int]
    identities: dict[str, tuple[Any, ...]]
    listening: Listeners | None

    def rows(self, values: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The socket rows with their flow, as ``SOCKETS_BULK`` writes them."""
        return [(*value, key) for value, key in zip(values, self.opened, strict=True)]


def plan_flows(values: list[tuple[Any, ...]], left: list[str | None], listening: Listeners | None) -> Moving:
    """The flows moved by socket rows opening (``values``) and closing (``left``: their flows); see
    collector.flows.  ``listening``: the host's open listeners, which must be known when a row ``connects``."""
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
    identities: dict[str, tuple[Any, ...]] = {}
    if not changes and not connects(values):
        return Moving([None] * len(values), changes, identities, listening)
    opened = file_flows(values, listening or frozenset(), changes, identities)
    return Moving(opened, changes, identities, listening)


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
