"""Writes: each agent message applied in one transaction, then acknowledged.

* A replayed (epoch, seq) changes nothing and is acknowledged again.
* A Snapshot reconciles the host's open intervals with what it lists: rows of
  sockets gone are closed, new sockets get rows, a changed state or owner closes
  the old row and opens a new one.  Unchanged sockets are not written.
* A Delta must be based on the message the collector applied last for that
  host; otherwise the agent is asked for a Snapshot.

Every statement is built once, here, with bound parameters: a collector applies
thousands of messages a second, and building SQLAlchemy statements per message
would cost more than running them.  New socket rows go in bulk: ``executemany``
of one constant INSERT on SQLite, ``COPY`` on PostgreSQL.

A store keeps in memory the open listeners of each host it wrote last, which
decide the role of the host's new connections (``collector.flows``), tagged with
the message that left them so; another collector writing the host in between
changes the host's (epoch, seq), and the listeners are read again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, bindparam, insert, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from sockfleet.collector import convert, flows, rules, spans
from sockfleet.collector.credentials import Credential
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import flows as flow_rows
from sockfleet.collector.schema import host_addresses, hosts, observations, sockets
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1.limits import MAX_BIGINT, MAX_TEXT

CHUNK = 500  # keys per IN (...) list
STEP_SOCKETS = 500  # sockets a step of a large snapshot writes, about 20 ms of work (collector.stepwise)
VERSIONED = tuple(sockets.c[name] for name in convert.VERSIONED_COLUMNS)
INSERT_COLUMNS = ("host_ref", "valid_from", *convert.ROW_COLUMNS, "flow")
# Where a stored row's fields are, in (ref, moment, *row.values()), for its flow.
_AT = {
    name: 2 + convert.ROW_COLUMNS.index(name)
    for name in ("netns", "proto", "state", "process", "local_address", "local_port", "remote_address", "remote_port")
}

HOST = select(
    hosts.c.epoch, hosts.c.seq, hosts.c.first_seen, hosts.c.last_seen, hosts.c.last_taken_at, hosts.c.complete
).where(hosts.c.id == bindparam("ref"))
HOST_FOR_UPDATE = HOST.with_for_update()
HOST_APPLIED = (
    update(hosts)
    .where(hosts.c.id == bindparam("ref"))
    .values(
        epoch=bindparam("epoch"),
        seq=bindparam("seq"),
        last_taken_at=bindparam("moment"),
        complete=bindparam("is_complete"),
        first_seen=bindparam("first"),
        last_seen=bindparam("last"),
    )
)
OBSERVED = insert(observations)
OPEN_ROWS = select(sockets.c.id, sockets.c.key, *VERSIONED).where(
    sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None)
)
CLOSE_KEYS = (
    update(sockets)
    .where(
        and_(
            sockets.c.host_ref == bindparam("ref"),
            sockets.c.key.in_(bindparam("keys", expanding=True)),
            sockets.c.valid_to.is_(None),
        )
    )
    .values(valid_to=bindparam("moment"), span=spans.closing_span())
    .returning(sockets.c.flow, sockets.c.proto, sockets.c.state)
)
CLOSE_IDS = (
    update(sockets)
    .where(sockets.c.id.in_(bindparam("ids", expanding=True)))
    .values(valid_to=bindparam("moment"), span=spans.closing_span())
    .returning(sockets.c.flow, sockets.c.proto, sockets.c.state)
)
# The host's open listeners, through their partial index (its condition written as the index's, and named
# for SQLite, whose planner would otherwise walk the host's whole history).
LISTENING = (
    select(sockets.c.netns, sockets.c.proto, sockets.c.local_address, sockets.c.local_port)
    .where(sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None), rules.accepts_sql(sockets.c))
    .with_hint(sockets, "INDEXED BY ix_sockets_open_listeners", "sqlite")
)
# Closes the open rows of the flows a message moves, and returns what they held.
CLOSE_FLOWS = (
    update(flow_rows)
    .where(
        flow_rows.c.host_ref == bindparam("ref"),
        flow_rows.c.key.in_(bindparam("keys", expanding=True)),
        flow_rows.c.valid_to.is_(None),
    )
    .values(valid_to=bindparam("moment"), span=spans.closing_span(flow_rows))
    .returning(
        flow_rows.c.key,
        *(flow_rows.c[name] for name in flows.IDENTITY_COLUMNS),
        flow_rows.c.connections,
        flow_rows.c.since,
        flow_rows.c.valid_from,
    )
)
FLOW_COLUMNS = ("host_ref", "key", *flows.IDENTITY_COLUMNS, "connections", "since", "valid_from")
Counts = tuple[int, int, int]  # sockets added, removed, changed


def _bulk_statements(table: str, columns: tuple[str, ...]) -> tuple[str, str]:
    """INSERT (SQLite) and COPY (PostgreSQL) text for new rows: constant text made from the table's own
    column names; values are always bound."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    return (
        f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' for _ in columns)})",  # noqa: S608
        f"COPY {table} ({quoted}) FROM STDIN",
    )


SOCKETS_BULK = _bulk_statements("sockets", INSERT_COLUMNS)
FLOWS_BULK = _bulk_statements("flows", FLOW_COLUMNS)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: acknowledged (maybe as a replay), or a full snapshot is needed; the
    moment it was stored at (µs since the epoch)."""

    acked: bool
    replay: bool = False
    resync_reason: str | None = None
    rows_written: int = 0
    moment_us: int | None = None


@dataclass(frozen=True, slots=True)
class Header:
    """The checked parts of a message other than its sockets: scan time, coverage (JSON, and whether the
    scan saw everything), addresses, and how many gaps the coverage records."""

    moment: datetime
    coverage: str | None
    complete: bool | None
    addresses: list[tuple[int, str, str]] | None
    gaps: int


def us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1)) // timedelta(microseconds=1)


class Resync(Exception):
    """Raised inside a transaction to roll it back and ask the agent for a Snapshot."""


# A host's open listeners as this collector left them, and the (epoch, seq, last_taken_at) of the message
# that left them so: while the host's row still says the same, no other collector has written since.
_Listening = tuple[tuple[int, int, datetime], frozenset[flows.Listener]]


class Store:
    """Applies agents' messages to one database.  ``max_skew``: how far ahead of the collector's clock a
    scan may be dated (a host whose clock runs ahead has its scans refused, never stored at a wrong time)."""

    def __init__(self, engine: Engine, max_skew: timedelta = convert.DEFAULT_SKEW) -> None:
        self.engine = engine
        self.max_skew = max_skew
        self.postgres = engine.dialect.name == "postgresql"
        # Saves a query per message that opens connections; kept only after the message's commit.
        self._listening: dict[int, _Listening] = {}

    def hello(self, hello: pb.Hello, credential: Credential | None = None) -> int:
        """Record the host (new or known) and its addresses; returns the host's row id.

        A host keeps its name: the name its credential was enrolled with, else the first it reported.
        A hello under another name, or under the name of another host id, is refused; renaming a host
        is ``sockfleet collector rename``.  An agent that reports its addresses with its scans
        (``addresses_in_scans``) has them recorded at each scan's time; the hello's are for collectors
        that do not read them there.
        """
        received = convert.now()
        fields = convert.hello_fields(hello, received)
        addresses = fields.pop("addresses")
        if credential is not None and credential.name:
            fields["name"] = credential.name  # the enrollment names the host
        name, host_id = fields["name"], fields["host_id"]
        with self.engine.begin() as conn:
            other = conn.execute(
                select(hosts.c.host_id).where(hosts.c.name == name, hosts.c.host_id != host_id)
            ).first()
            if other is not None:
                raise RejectedMessage(
                    f"hello.host_name: {name!r} is the name of another host (id {other.host_id!r})", "PERMISSION_DENIED"
                )
            row = conn.execute(
                select(hosts.c.id, hosts.c.name, hosts.c.last_taken_at).where(hosts.c.host_id == host_id)
            ).first()
            if row is None:
                ref = conn.execute(
                    insert(hosts).values(
                        **fields, epoch=0, seq=0, complete=True, first_seen=received, last_seen=received
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                since = convert.EARLIEST  # the host's addresses hold for its whole observed history
            else:
                if row.name != name:
                    raise RejectedMessage(
                        f"hello.host_name: host {host_id!r} reports as {name!r} but is named {row.name!r}; "
                        f"renaming it takes `sockfleet collector rename --host {host_id} --name {name}`",
                        "PERMISSION_DENIED",
                    )
                ref = row.id
                conn.execute(update(hosts).where(hosts.c.id == ref).values(**fields))
                # A change of address happened after the last scan the collector applied: date it there, so
                # that scans replayed with their own (earlier) times still resolve to the new addresses.
                since = row.last_taken_at or convert.EARLIEST
            if not hello.addresses_in_scans:
                self._addresses(conn, ref, addresses, since)
        return int(ref)

    def refused(self, ref: int, reason: str) -> None:
        """Remember the host's last refused message, for ``sockfleet hosts``."""
        with self.engine.begin() as conn:
            conn.execute(
                update(hosts)
                .where(hosts.c.id == ref)
                .values(last_refusal_at=convert.now(), last_refusal=reason[:MAX_TEXT])
            )

    def _addresses(self, conn: Connection, ref: int, found: list[tuple[int, str, str]], moment: datetime) -> None:
        open_rows = conn.execute(
            select(
                host_addresses.c.id, host_addresses.c.netns, host_addresses.c.interface, host_addresses.c.address
            ).where(host_addresses.c.host_ref == ref, host_addresses.c.valid_to.is_(None))
        ).all()
        held = {(r.netns, r.interface, r.address): r.id for r in open_rows}  # closed and opened at ``moment``
        wanted = set(found)
        gone = [row_id for key, row_id in held.items() if key not in wanted]
        for chunk in chunks(gone):
            conn.execute(update(host_addresses).where(host_addresses.c.id.in_(chunk)).values(valid_to=moment))
        new = [
            {"host_ref": ref, "netns": n, "interface": i, "address": a, "valid_from": moment}
            for n, i, a in found
            if (n, i, a) not in held
        ]
        if new:
            conn.execute(insert(host_addresses), new)

    def stepwise(self, message: pb.Snapshot | pb.Delta) -> bool:
        """Whether a message is large enough to be applied in steps (``collector.stepwise``) rather than at once."""
        return isinstance(message, pb.Snapshot) and len(message.sockets) > STEP_SOCKETS * 10

    def apply(self, ref: int, message: pb.Snapshot | pb.Delta, behind: timedelta = timedelta(0)) -> Outcome:
        """Apply one Snapshot or Delta of host ``ref`` in one transaction (``behind``: see ``header``)."""
        snapshot = isinstance(message, pb.Snapshot)
        header = self.header(message, behind)
        known = self._listening.get(ref)  # a message rolled back or replayed leaves it valid
        try:
            with self.engine.begin() as conn:
                host = conn.execute(HOST_FOR_UPDATE, {"ref": ref}).one()
                moment = self.check_host(host, message, header)
                if moment is None:
                    return Outcome(acked=True, replay=True)
                listening = None
                if known is not None and known[0] == (host.epoch, host.seq, host.last_taken_at):
                    listening = known[1]
                if snapshot:
                    counts, listening = self._snapshot(conn, ref, message, moment, listening)  # type: ignore[arg-type]
                    kind = "snapshot"
                else:
                    if (message.epoch, message.base_seq) != (host.epoch, host.seq):  # type: ignore[union-attr]
                        raise Resync(
                            f"delta is based on ({message.epoch}, {message.base_seq}), "  # type: ignore[union-attr]
                            f"the collector holds ({host.epoch}, {host.seq})"
                        )
                    counts, listening = self._delta(conn, ref, message, moment, listening)  # type: ignore[arg-type]
                    kind = "delta" if any(counts) or header.coverage is not None else "heartbeat"
                self.finish(conn, ref, host, message, header, moment, kind, counts)
        except Resync as resync:
            return Outcome(acked=False, resync_reason=str(resync))
        self.remember_listening(ref, message, moment, listening)
        return Outcome(acked=True, rows_written=counts[0] + counts[2], moment_us=us(moment))

    def header(self, message: pb.Snapshot | pb.Delta, behind: timedelta = timedelta(0)) -> Header:
        """The checked parts of a message other than its sockets.

        Its scan time is the agent's, corrected by how far ``behind`` the collector's clock the agent's
        was at its hello (when more than the tolerance), and never later than the collector's clock: a
        clock that runs slightly ahead, or far behind, still dates every change when it happened.
        """
        where = "snapshot" if isinstance(message, pb.Snapshot) else "delta"
        received = convert.now()
        moment = convert.taken_at(message.taken_at_us, f"{where}.taken_at_us", self.max_skew, received - behind)
        moment = min(moment + behind, received)
        if message.epoch == 0 or message.seq == 0:
            raise RejectedMessage(f"{where}: epoch and seq start at 1")
        if max(message.epoch, message.seq, getattr(message, "base_seq", 0)) > MAX_BIGINT:
            raise RejectedMessage(f"{where}: epoch and seq must be below 2**63")
        coverage, complete = (None, None)
        if message.HasField("coverage"):
            coverage, complete = convert.coverage_json(message.coverage, f"{where}.coverage")
        addresses = None
        if message.HasField("addresses"):
            addresses = convert.addresses(message.addresses.items, f"{where}.addresses")
        gaps = len(message.coverage.gaps) if message.HasField("coverage") else 0
        return Header(moment, coverage, complete, addresses, gaps)

    @staticmethod
    def check_host(host: Any, message: pb.Snapshot | pb.Delta, header: Header) -> datetime | None:
        """The moment the message is stored at, or None for a message already applied (a replay)."""
        if message.epoch == host.epoch and message.seq <= host.seq:
            return None
        if message.epoch < host.epoch:
            where = "snapshot" if isinstance(message, pb.Snapshot) else "delta"
            raise RejectedMessage(
                f"{where}.epoch: {message.epoch} is older than the host's epoch {host.epoch} (another "
                "agent process reports for this host, or its clock went back); start a new epoch",
                "FAILED_PRECONDITION",
                (("sockfleet-epoch", str(host.epoch)),),
            )
        if host.last_taken_at is not None and header.moment < host.last_taken_at:
            floor: datetime = host.last_taken_at  # history never runs backwards, even when the agent's clock does
            return floor
        return header.moment

    def finish(
        self,
        conn: Connection,
        ref: int,
        host: Any,
        message: pb.Snapshot | pb.Delta,
        header: Header,
        moment: datetime,
        kind: str,
        counts: Counts,
    ) -> None:
        """What every applied message leaves besides sockets: the host's addresses, its row, an observation."""
        if header.addresses is not None:
            self._addresses(conn, ref, header.addresses, moment)
        complete = header.complete
        if complete is None:
            complete = True if isinstance(message, pb.Snapshot) else host.complete
        conn.execute(
            HOST_APPLIED,
            {
                "ref": ref,
                "epoch": message.epoch,
                "seq": message.seq,
                "moment": moment,
                "is_complete": complete,
                "first": min(host.first_seen, moment),
                "last": max(host.last_seen, moment),
            },
        )
        conn.execute(
            OBSERVED,
            {
                "host_ref": ref,
                "epoch": message.epoch,
                "seq": message.seq,
                "kind": kind,
                "taken_at": moment,
                "received_at": convert.now(),
                "added": counts[0],
                "removed": counts[1],
                "changed": counts[2],
                "complete": complete,
                "coverage": header.coverage,
                "gaps": header.gaps,
            },
        )

    def remember_listening(
        self, ref: int, message: pb.Snapshot | pb.Delta, moment: datetime, listening: frozenset[flows.Listener] | None
    ) -> None:
        """Keep the host's open listeners after a committed message (see the module's docstring)."""
        if listening is None:
            self._listening.pop(ref, None)
        else:
            self._listening[ref] = ((message.epoch, message.seq, moment), listening)

    def _snapshot(
        self,
        conn: Connection,
        ref: int,
        message: pb.Snapshot,
        moment: datetime,
        listening: frozenset[flows.Listener] | None,
    ) -> tuple[Counts, frozenset[flows.Listener] | None]:
        held = {r[1]: (r[0], tuple(r[2:])) for r in conn.execute(OPEN_ROWS, {"ref": ref})}
        listed: set[str] = set()
        opening: list[convert.SocketRow] = []
        for index, sock in enumerate(message.sockets):
            digest = convert.key_digest(sock.key)
            if digest in listed:
                raise RejectedMessage(f"snapshot.sockets[{index}]: the same socket is listed twice")
            listed.add(digest)
            stored = held.get(digest)
            if stored is not None and stored[1] == convert.stored_versioned(sock):
                continue  # unchanged: already checked when it was stored, and nothing to write
            opening.append(convert.socket_row(sock, f"snapshot.sockets[{index}]"))
        changed_keys = {row.key for row in opening}
        closing = [row_id for key, (row_id, _) in held.items() if key not in listed or key in changed_keys]
        left: list[Row[Any]] = []
        for chunk in chunks(closing):
            left += conn.execute(CLOSE_IDS, {"ids": list(chunk), "moment": moment, **spans.cutoffs(moment)})
        listening = self._insert(conn, ref, opening, moment, left, listening)
        changed = sum(1 for row in opening if row.key in held)
        return (len(opening) - changed, len(closing) - changed, changed), listening

    def _delta(
        self,
        conn: Connection,
        ref: int,
        message: pb.Delta,
        moment: datetime,
        listening: frozenset[flows.Listener] | None,
    ) -> tuple[Counts, frozenset[flows.Listener] | None]:
        added = [convert.socket_row(s, f"delta.added[{i}]") for i, s in enumerate(message.added)]
        changed = [convert.socket_row(s, f"delta.changed[{i}]") for i, s in enumerate(message.changed)]
        removed = [convert.key_row(k, f"delta.removed[{i}]")[0] for i, k in enumerate(message.removed)]
        keys = [row.key for row in added] + [row.key for row in changed] + removed
        if len(set(keys)) != len(keys):
            raise RejectedMessage("delta: a socket appears twice among added, changed and removed")
        closing = removed + [row.key for row in changed]
        left: list[Row[Any]] = []
        for chunk in chunks(closing):
            left += conn.execute(
                CLOSE_KEYS, {"ref": ref, "keys": list(chunk), "moment": moment, **spans.cutoffs(moment)}
            )
        if len(left) != len(closing):
            raise Resync("delta removes or changes a socket the collector does not hold")
        listening = self._insert(conn, ref, added + changed, moment, left, listening)
        return (len(added), len(removed), len(changed)), listening

    def _insert(
        self,
        conn: Connection,
        ref: int,
        rows: Sequence[convert.SocketRow],
        moment: datetime,
        left: list[Row[Any]],
        listening: frozenset[flows.Listener] | None,
    ) -> frozenset[flows.Listener] | None:
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
        listening: frozenset[flows.Listener] | None,
    ) -> tuple[list[str | None], frozenset[flows.Listener] | None]:
        """The flow of each socket opening (None: of no flow), after moving the host's flows; see collector.flows.
        Also the host's open listeners after the message, when known."""
        at = _AT
        connected = [v for v in values if v[at["remote_address"]] is not None and v[at["proto"]] != "unix"]
        if connected and listening is None:
            listening = frozenset(flows.listener_of(*row) for row in conn.execute(LISTENING, {"ref": ref}))
        if listening is not None:
            listening |= {
                flows.listener_of(v[at["netns"]], v[at["proto"]], v[at["local_address"]], v[at["local_port"]])
                for v in values
                if rules.accepts(v[at["proto"]], v[at["state"]])
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
            self.write(
                conn,
                FLOWS_BULK,
                [
                    (ref, key, *row.flow, row.connections, self.stamp(row.since), self.stamp(row.valid_from))
                    for key, row in new
                ],
            )

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
            # COPY goes to the driver itself, whose errors SQLAlchemy has not translated: translate them here.
            state = str(getattr(exc, "sqlstate", "") or "")
            if state == "23505":
                raise Resync("a message opens a socket the collector already holds") from exc
            if state.startswith("22"):
                raise RejectedMessage(f"the database refused a value: {' '.join(str(exc).split())[:300]}") from exc
            if getattr(exc, "sqlstate", None) is not None or type(exc).__module__.startswith("psycopg"):
                raise OperationalError(statements[1], None, exc) from exc
            raise


def file_flows(
    values: list[tuple[Any, ...]],
    listening: frozenset[flows.Listener],
    changes: dict[str, int],
    identities: dict[str, tuple[Any, ...]],
) -> list[str | None]:
    """The flow key of each socket row opening (``values``: as written, see ``_AT``), counted in ``changes``
    (one more open socket each) and named in ``identities``."""
    at = _AT
    holds = listening.__contains__
    opened: list[str | None] = []
    for v in values:
        flow = flows.identity(
            v[at["netns"]],
            v[at["proto"]],
            v[at["state"]],
            v[at["process"]],
            v[at["local_address"]],
            v[at["local_port"]],
            v[at["remote_address"]],
            v[at["remote_port"]],
            holds,
        )
        if flow is None:
            opened.append(None)
            continue
        key = flows.digest(flow)
        identities[key] = flow
        changes[key] = changes.get(key, 0) + 1
        opened.append(key)
    return opened


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
