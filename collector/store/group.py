"""Deltas of several hosts applied in one transaction: group commit.

A collector of a large fleet applies hundreds of deltas a second, most of a few sockets, and on PostgreSQL
each message applied alone costs its own transaction and four round trips, with their statements' work in
the collector's process, for a few rows.  A group of deltas of different hosts is applied in one transaction
of as many round trips: the hosts' states locked in one statement, their closed sockets and flows each closed
in one statement at their own message's time, the new rows in one ``COPY``, the hosts' states and
observations in the closing pipeline with the COMMIT.  On SQLite, where a statement costs no round trip but a
commit writes every page it changed, the group's messages are applied one after the other, each as it is
alone, in one transaction.  Every message of the group is acknowledged after that commit, and each host's
history is exactly what applying its message alone writes.

What a message alone would refuse, or answer with a request for a snapshot, it does so in a group too,
without touching the other messages: a replay, an older epoch, a delta not based on the host's last
message, a stream whose host another stream took.  A delta that closes a socket the collector does not
hold is found only by writing: then the group is rolled back, that message applied alone (``Store.apply``)
and the others together again; that host's next delta goes alone too, so that an agent that keeps sending
such deltas costs the others nothing.  A database that stays locked past the wait (another writer on a
SQLite file, a lock timeout on PostgreSQL) or cannot be reached fails every message of the group with its
error, after one wait: applied one by one, each would wait as long again.  A pooled connection the database
closed since its last use fails the group before it writes anything: the group goes again on a new one.
After a deadlock, or any other error, the group's messages are applied one by one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.exc import DBAPIError, OperationalError

from sockfleet.collector import convert, flows
from sockfleet.collector.db import reason
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.store import Outcome, Store, us
from sockfleet.collector.store.leases import Lease
from sockfleet.collector.store.statements import (
    CLOSE_FLOWS_MANY,
    CLOSE_KEYS_MANY,
    FLOWS_BULK,
    LISTENING_MANY,
    SOCKETS_BULK,
)
from sockfleet.collector.store.writing import (
    Listeners,
    Moving,
    Resync,
    connects,
    open_flow,
    plan_flows,
    still_listening,
)
from sockfleet.v1 import fleet_pb2 as pb

log = logging.getLogger("sockfleet.collector")
MAX_SOCKETS = 1_000  # a delta that opens or closes more goes alone: a group holds its hosts locked while it works


@dataclass(frozen=True, slots=True)
class Message:
    """A delta of host ``ref`` as its stream hands it over (``behind`` and ``lease``: see ``Store.apply``)."""

    ref: int
    delta: pb.Delta
    behind: timedelta = timedelta(0)
    lease: Lease | None = None


def joins(delta: pb.Delta) -> bool:
    """Whether a delta may be applied in a group: one that reports the host's addresses (which change
    seldom) goes alone, and so does a large one."""
    return not delta.HasField("addresses") and len(delta.added) + len(delta.changed) + len(delta.removed) <= MAX_SOCKETS


class Regroup(Exception):
    """A message of the group needs what its transaction cannot give alone: roll back and apply each alone."""


@dataclass(slots=True)
class _Host:
    """One message of a group as it is applied."""

    index: int  # its place in the group
    message: Message
    scan: convert.Scan
    at: datetime  # its time before it is checked against the host's last message
    moment: datetime = datetime.min
    host: Any = None  # the host's state, locked
    closing: list[str] = field(default_factory=list)
    left: list[Any] = field(default_factory=list)
    values: list[tuple[Any, ...]] = field(default_factory=list)
    listening: Listeners | None = None
    moving: Moving | None = None
    counts: tuple[int, int, int] = (0, 0, 0)  # sockets added, removed, changed
    kind: str = ""  # delta or heartbeat (``Store.delta_kind``)


Result = Outcome | Exception


class Apart(Exception):
    """Messages of the group that only writing found must go alone (``refs``: their hosts): roll back."""

    def __init__(self, refs: set[int], why: str) -> None:
        super().__init__(why)
        self.refs = refs


def apply_group(store: Store, messages: list[Message]) -> list[Result]:
    """Apply deltas of distinct hosts (each ``joins``) together; the outcome of each, or the exception that
    applying it alone raises (a refusal, a database error)."""
    results: list[Result | None] = [None] * len(messages)
    together, alone = _sorted(store, messages, results)
    reconnected = False
    while len(together) > 1:
        try:
            (_together if store.postgres else _in_turn)(store, together, results)
            together = []
        except Apart as exc:  # those go alone, the others together again
            log.debug("%d of a group of %d deltas go alone: %s", len(exc.refs), len(together), exc)
            store.apart |= exc.refs
            alone += [host for host in together if host.message.ref in exc.refs]
            together = [host for host in together if host.message.ref not in exc.refs]
        except OperationalError as exc:
            if exc.connection_invalidated and not reconnected:  # nothing was written (see ``Store.apply``)
                reconnected = True
                continue
            if _retried_alone(exc):
                _regrouped(exc, len(together))
                break
            log.info("a group of %d deltas failed: %s", len(together), reason(exc))
            for host in together:
                results[host.index] = exc
            together = []
        except Exception as exc:  # a host gone, a resync or a refusal of no single host: one by one
            _regrouped(exc, len(together))
            break
    for host in alone + together:
        results[host.index] = _alone(store, host)
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _sorted(store: Store, messages: list[Message], results: list[Result | None]) -> tuple[list[_Host], list[_Host]]:
    """The messages to apply together and those that go alone (their host's delta went astray); a message
    that cannot be read has its refusal as its result."""
    together: list[_Host] = []
    alone: list[_Host] = []
    for index, message in enumerate(messages):
        try:
            scan = convert.delta(message.delta)
            host = _Host(index, message, scan, store.moment(scan, message.behind))
        except RejectedMessage as exc:
            results[index] = exc
            continue
        (alone if message.ref in store.apart else together).append(host)
    return together, alone


def _retried_alone(exc: OperationalError) -> bool:
    """Whether the messages of a group its error failed are applied again one by one: after a deadlock or a
    serialization failure (PostgreSQL's class 40), which a smaller transaction avoids, not after a wait for a
    lock that timed out or a database that cannot be reached, where each would fail as the group did."""
    return str(getattr(exc.orig, "sqlstate", "") or "").startswith("40")


def _regrouped(exc: Exception, size: int) -> None:
    """Say why a group's deltas go one by one: expected now and then (a delta the collector must refuse or
    answer with a resync, the database), a defect otherwise."""
    if isinstance(exc, (Regroup, Resync, RejectedMessage)):
        log.debug("a group of %d deltas applied one by one: %s", size, exc)
    elif isinstance(exc, DBAPIError):
        log.info("a group of %d deltas applied one by one after a database error: %s", size, reason(exc))
    else:
        log.warning("a group of %d deltas applied one by one after an unexpected error", size, exc_info=exc)


def _alone(store: Store, host: _Host) -> Result:
    """Apply a message alone; once a delta of a host whose delta went astray is applied, the host joins groups
    again."""
    message = host.message
    try:
        outcome = store.apply(message.ref, host.scan, message.behind, message.lease)
    except Exception as exc:  # the stream answers it as it answers a message applied alone
        return exc
    if outcome.acked:
        store.apart.discard(message.ref)
    return outcome


def _together(store: Store, hosts: list[_Host], results: list[Result | None]) -> None:
    with store.engine.begin() as conn, store.batched(conn):
        locked = store.locked_hosts(conn, sorted(host.message.ref for host in hosts))
        writing = [host for host in hosts if _checked(store, host, locked, results)]
        _close_sockets(store, conn, writing)
        _listen(store, conn, writing)
        flow_rows = _move_flows(store, conn, writing)
        socket_rows = [row for host in writing if host.moving for row in host.moving.rows(host.values)]
        if flow_rows:
            store.write(conn, FLOWS_BULK, flow_rows)
        if socket_rows:
            store.write(conn, SOCKETS_BULK, socket_rows)
        _record(store, conn, writing)
    for host in writing:
        assert host.moving is not None
        store.remember_listening(host.message.ref, host.scan, host.moment, host.moving.listening)
        added, _, changed = host.counts
        results[host.index] = Outcome(
            acked=True, rows_written=added + changed, moment_us=us(host.moment), kind=host.kind
        )


def _in_turn(store: Store, hosts: list[_Host], results: list[Result | None]) -> None:
    """SQLite: each message applied as it is alone, one after the other in one transaction with one commit
    (SQLite takes one writer, so the hosts' messages cannot interleave; what a commit costs is paid once)."""
    applied = []
    with store.engine.begin() as conn:
        for host in hosts:
            message = host.message
            if not _admitted(store, host, store.locked_host(conn, message.ref), results):
                continue
            try:
                written = store.written(conn, message.ref, host.host, host.scan, host.moment, message.lease)
                applied.append((host, *written))
            except (Resync, RejectedMessage) as exc:
                raise Apart({message.ref}, str(exc)) from exc
    for host, outcome, listening in applied:
        store.remember_listening(host.message.ref, host.scan, host.moment, listening)
        results[host.index] = outcome


def _record(store: Store, conn: Connection, writing: list[_Host]) -> None:
    """What every message leaves besides sockets (``Store.records``), each statement once for the group."""
    made: dict[Executable, list[dict[str, Any]]] = {}
    for host in writing:
        ref, lease = host.message.ref, host.message.lease
        for statement, params in store.records(ref, host.host, host.scan, host.moment, host.kind, host.counts, lease):
            made.setdefault(statement, []).extend(params if isinstance(params, list) else [params])
    for statement, rows in made.items():
        store.later(conn, statement, rows)


def _admitted(store: Store, host: _Host, state: Any, results: list[Result | None]) -> bool:
    """Whether the message is to be written (then its host's state and moment are set); otherwise its result
    is set: a replay acknowledged, a resync asked, or a refusal (``Store.admitted``)."""
    message = host.message
    try:
        moment = store.admitted(state, host.scan, host.at, message.lease)
    except RejectedMessage as exc:
        results[host.index] = exc
        return False
    except Resync as exc:
        results[host.index] = Outcome(acked=False, resync_reason=str(exc))
        return False
    if moment is None:
        results[host.index] = Outcome(acked=True, replay=True)
        return False
    host.host, host.moment = state, moment
    return True


def _checked(store: Store, host: _Host, locked: dict[int, Any], results: list[Result | None]) -> bool:
    """Whether the message is to be written, prepared for it (``_admitted``)."""
    state = locked.get(host.message.ref)
    if state is None:
        raise Regroup(f"no host with id {host.message.ref}")
    if not _admitted(store, host, state, results):
        return False
    changes = host.scan.body
    assert isinstance(changes, convert.Changes)
    host.left = []
    host.closing = changes.removed + [row.key for row in changes.changed]
    host.counts = (len(changes.added), len(changes.removed), len(changes.changed))
    host.kind = store.delta_kind(host.scan, host.counts)
    host.values = store.socket_values(host.message.ref, changes.added + changes.changed, host.moment)
    return True


def _close_sockets(store: Store, conn: Connection, writing: list[_Host]) -> None:
    """Close the open rows of every socket the messages remove or change; each must be open."""
    closing = [(host, key) for host in writing for key in host.closing]
    if not closing:
        return
    by_ref = {host.message.ref: host for host in writing}
    params = _arrays(closing)
    for row in store.fetch(conn, CLOSE_KEYS_MANY, params):
        by_ref[row.host_ref].left.append(row)
    astray = {host.message.ref for host in writing if len(host.left) != len(host.closing)}
    if astray:
        raise Apart(astray, "a delta removes or changes a socket the collector does not hold")


def _listen(store: Store, conn: Connection, writing: list[_Host]) -> None:
    """Each host's open listeners, where its new connections need them: known, or read for all at once."""
    unknown = []
    for host in writing:
        host.listening = still_listening(host.left, store.listening_of(host.message.ref, host.host))
        if host.listening is None and connects(host.values):
            unknown.append(host)
    if unknown:
        found: dict[int, set[flows.Listener]] = defaultdict(set)
        refs = [host.message.ref for host in unknown]
        for row in conn.execute(LISTENING_MANY, {"refs": refs}):
            found[row.host_ref].add(flows.listener_of(*row[1:]))
        for host in unknown:
            host.listening = frozenset(found[host.message.ref])
    for host in writing:
        host.moving = plan_flows(host.values, [row.flow for row in host.left], host.listening)


def _move_flows(store: Store, conn: Connection, writing: list[_Host]) -> list[tuple[Any, ...]]:
    """Close the open rows of every flow the messages move, each at its message's time; their new rows."""
    closing = [(host, key) for host in writing if host.moving for key, change in host.moving.changes.items() if change]
    current: dict[int, dict[str, flows.Open]] = defaultdict(dict)
    if closing:
        for row in store.fetch(conn, CLOSE_FLOWS_MANY, _arrays(closing)):
            current[row[0]][row[1]] = open_flow(row[1:])
    rows = []
    for host in writing:
        assert host.moving is not None
        ref = host.message.ref
        rows += store.new_flows(ref, current[ref], host.moving.changes, host.moving.identities, host.moment)
    return rows


def _arrays(closing: list[tuple[_Host, str]]) -> dict[str, list[Any]]:
    """(host, key, time) of each row to close, as the three arrays the ``*_MANY`` statements take."""
    return {
        "refs": [host.message.ref for host, _ in closing],
        "keys": [key for _, key in closing],
        "moments": [host.moment for host, _ in closing],
    }
