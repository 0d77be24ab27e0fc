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
hold is found only by writing: then the group is rolled back and its messages applied one by one
(``Store.apply``), as are all of them when the group's transaction fails for any other reason.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.exc import DBAPIError

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


def apply_group(store: Store, messages: list[Message]) -> list[Result]:
    """Apply deltas of distinct hosts (each ``joins``) together; the outcome of each, or the exception that
    applying it alone raises (a refusal, a database error)."""
    results: list[Result | None] = [None] * len(messages)
    hosts = []
    for index, message in enumerate(messages):
        try:
            scan = convert.delta(message.delta)
            hosts.append(_Host(index, message, scan, store.moment(scan, message.behind)))
        except RejectedMessage as exc:
            results[index] = exc
    if len(hosts) == 1:
        results[hosts[0].index] = _alone(store, hosts[0])
    elif hosts:
        try:
            (_together if store.postgres else _in_turn)(store, hosts, results)
        except Exception as exc:  # a delta to answer with a resync, a lock cycle, a lost connection: one by one
            _regrouped(exc, len(hosts))
            for host in hosts:
                results[host.index] = _alone(store, host)
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


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
    message = host.message
    try:
        return store.apply(message.ref, host.scan, message.behind, message.lease)
    except Exception as exc:  # the stream answers it as it answers a message applied alone
        return exc


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
            applied.append(store.written(conn, message.ref, host.scan, host.at, message.lease))
    for host, (outcome, moment, listening) in zip(hosts, applied, strict=True):
        if moment is not None:
            store.remember_listening(host.message.ref, host.scan, moment, listening)
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


def _checked(store: Store, host: _Host, locked: dict[int, Any], results: list[Result | None]) -> bool:
    """Whether the message is to be written; otherwise its result is set: a replay acknowledged, a resync asked,
    or a refusal (``Store.apply`` decides each the same way)."""
    ref, scan = host.message.ref, host.scan
    state = locked.get(ref)
    if state is None:
        raise Regroup(f"no host with id {ref}")
    try:
        if host.message.lease is not None:
            host.message.lease.check(state)
        moment = store.check_host(state, scan, host.at)
    except RejectedMessage as exc:
        results[host.index] = exc
        return False
    if moment is None:
        results[host.index] = Outcome(acked=True, replay=True)
        return False
    astray = store.off_base(state, scan)
    if astray is not None:
        results[host.index] = Outcome(acked=False, resync_reason=astray)
        return False
    host.host, host.moment = state, moment
    changes = scan.body
    assert isinstance(changes, convert.Changes)
    host.closing = changes.removed + [row.key for row in changes.changed]
    host.counts = (len(changes.added), len(changes.removed), len(changes.changed))
    host.kind = store.delta_kind(scan, host.counts)
    host.values = store.socket_values(ref, changes.added + changes.changed, moment)
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
    if any(len(host.left) != len(host.closing) for host in writing):
        raise Regroup("a delta removes or changes a socket the collector does not hold")


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
