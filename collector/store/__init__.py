"""Writes: each agent message applied in one transaction, then acknowledged.

* A replayed (epoch, seq) changes nothing and is acknowledged again.
* A snapshot reconciles the host's open intervals with what it lists (``store.snapshot``; a large one in
  steps, ``store.stepwise``).
* A delta must be based on the message the collector applied last for that host; otherwise the agent is
  asked for a snapshot (``store.delta``).
* Rows go in bulk, and each socket opened or closed moves its flow (``store.writing``), with statements
  built once (``store.statements``).

A store keeps in memory the open listeners of each host it wrote last, which
decide the role of the host's new connections (``collector.flows``), tagged with
the message that left them so; another collector writing the host in between
changes the host's (epoch, seq), and the listeners are read again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Executable, insert, update
from sqlalchemy.exc import DBAPIError

from sockfleet.collector import convert
from sockfleet.collector.credentials import Credential
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import host_addresses, host_state, hosts
from sockfleet.collector.store.delta import apply_delta
from sockfleet.collector.store.leases import Lease
from sockfleet.collector.store.snapshot import apply_snapshot
from sockfleet.collector.store.statements import (
    CLOSED_FLOWS,
    HOST_APPLIED,
    KNOWN_HOST,
    NAMED_OTHER,
    OBSERVED,
    OPEN_ADDRESSES,
    STEP_SOCKETS,
    Counts,
    chunks,
)
from sockfleet.collector.store.writing import Listeners, Resync, Writer
from sockfleet.v1.limits import MAX_TEXT

__all__ = ["STEP_SOCKETS", "Outcome", "Resync", "Store"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: acknowledged (maybe as a replay), or a full snapshot is needed; the
    moment it was stored at (µs since the epoch), and its kind as its observation says (snapshot, delta,
    heartbeat)."""

    acked: bool
    replay: bool = False
    resync_reason: str | None = None
    rows_written: int = 0
    moment_us: int | None = None
    kind: str | None = None


def us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1)) // timedelta(microseconds=1)


# A host's open listeners as this collector left them, and the (epoch, seq, last_taken_at) of the message
# that left them so: while the host's state still says the same, no other collector has written since.
_Listening = tuple[tuple[int, int, datetime], Listeners]


class Store(Writer):
    """Applies agents' messages to one database.  ``max_skew``: how far ahead of the collector's clock a
    scan may be dated (a host whose clock runs ahead has its scans refused, never stored at a wrong time)."""

    def __init__(self, engine: Engine, max_skew: timedelta = convert.DEFAULT_SKEW) -> None:
        super().__init__(engine)
        self.max_skew = max_skew
        # Saves a query per message that opens connections; kept only after the message's commit.
        self._listening: dict[int, _Listening] = {}
        # Hosts whose delta only writing found astray in a group (``store.group``): their next delta goes alone.
        self.apart: set[int] = set()

    def hello(self, greeting: convert.Greeting, credential: Credential | None = None) -> int:
        """Record the host (new or known) and its addresses; returns the host's row id.

        A host keeps its name: the name its credential was enrolled with, else the first it reported.
        A hello under another name, or under the name of another host id, is refused; renaming a host
        is ``sockfleet collector rename``.  An agent that reports its addresses with its scans
        (``addresses_in_scans``) has them recorded at each scan's time; the hello's are for collectors
        that do not read them there.
        """
        received = convert.now()
        fields = dict(greeting.fields)
        if credential is not None and credential.name:
            fields["name"] = credential.name  # the enrollment names the host
        with self.engine.begin() as conn:
            _check_name(conn, greeting.host_id, fields["name"])
            row = conn.execute(KNOWN_HOST, {"host_id": greeting.host_id}).first()
            if row is None:
                ref = conn.execute(insert(hosts).values(**fields)).inserted_primary_key[0]  # type: ignore[index]
                state = {"epoch": 0, "seq": 0, "complete": True, "first_seen": received, "last_seen": received}
                conn.execute(insert(host_state).values(host_ref=ref, **state))
                since = convert.EARLIEST  # the host's addresses hold for its whole observed history
            else:
                _check_name(conn, greeting.host_id, fields["name"], row.name)
                ref = row.id
                conn.execute(update(hosts).where(hosts.c.id == ref).values(**fields))
                # A change of address happened after the last scan the collector applied: date it there, so
                # that scans replayed with their own (earlier) times still resolve to the new addresses.
                since = row.last_taken_at or convert.EARLIEST
            if not greeting.addresses_in_scans:
                self._addresses(conn, ref, greeting.addresses, since)
        return int(ref)

    def refused(self, ref: int, reason: str) -> None:
        """Remember the host's last refused message, for ``sockfleet hosts``."""
        with self.engine.begin() as conn:
            conn.execute(
                update(hosts)
                .where(hosts.c.id == ref)
                .values(last_refusal_at=convert.now(), last_refusal=reason[:MAX_TEXT])
            )

    def _addresses(self, conn: Connection, ref: int, found: list[convert.Address], moment: datetime) -> None:
        held = {(r.netns, r.interface, r.address): r.id for r in conn.execute(OPEN_ADDRESSES, {"ref": ref})}
        wanted = set(found)
        gone = [row_id for key, row_id in held.items() if key not in wanted]  # closed and opened at ``moment``
        for chunk in chunks(gone):
            conn.execute(update(host_addresses).where(host_addresses.c.id.in_(chunk)).values(valid_to=moment))
        new = [
            {"host_ref": ref, "netns": n, "interface": i, "address": a, "valid_from": moment}
            for n, i, a in found
            if (n, i, a) not in held
        ]
        if new:
            conn.execute(insert(host_addresses), new)

    @staticmethod
    def stepwise(scan: convert.Scan) -> bool:
        """Whether a message is large enough to be applied in steps (``store.stepwise``) rather than at once."""
        return isinstance(scan.body, convert.Listing) and len(scan.body) > STEP_SOCKETS * 10

    def apply(
        self, ref: int, scan: convert.Scan, behind: timedelta = timedelta(0), lease: Lease | None = None
    ) -> Outcome:
        """Apply one snapshot or delta of host ``ref`` in one transaction (``behind``: see ``moment``), as the
        holder of ``lease`` when given (``store.leases``).

        A connection the database closed since its last use (a restart, an idle timeout) fails the message's
        first statement and nothing was written: the message is applied once more, on a new connection."""
        try:
            return self._apply(ref, scan, behind, lease)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        return self._apply(ref, scan, behind, lease)

    def _apply(self, ref: int, scan: convert.Scan, behind: timedelta, lease: Lease | None) -> Outcome:
        at = self.moment(scan, behind)
        known = self._listening.get(ref)  # a message rolled back or replayed leaves it valid
        try:
            with self.engine.begin() as conn, self.batched(conn):
                host = self.locked_host(conn, ref)
                moment = self.admitted(host, scan, at, lease)
                if moment is None:
                    return Outcome(acked=True, replay=True)
                outcome, listening = self.written(conn, ref, host, scan, moment, lease, known)
        except Resync as resync:
            return Outcome(acked=False, resync_reason=str(resync))
        self.remember_listening(ref, scan, moment, listening)
        return outcome

    def admitted(self, host: Any, scan: convert.Scan, at: datetime, lease: Lease | None) -> datetime | None:
        """The moment a message of a host (``host``: its state, locked; ``at``: the message's time, from
        ``moment``) is stored at, or None for a message already applied (a replay).  Raises, before the
        message writes anything, ``RejectedMessage`` for a stream whose host another stream took or an older
        epoch, and ``Resync`` for a delta not based on the host's last message."""
        if lease is not None:
            lease.check(host)
        moment = self.check_host(host, scan, at)
        if moment is not None and isinstance(scan.body, convert.Changes):
            astray = self.off_base(host, scan)
            if astray is not None:
                raise Resync(astray)
        return moment

    def written(
        self,
        conn: Connection,
        ref: int,
        host: Any,
        scan: convert.Scan,
        moment: datetime,
        lease: Lease | None,
        known: _Listening | None = None,
    ) -> tuple[Outcome, Listeners | None]:
        """Write an ``admitted`` message at ``moment`` in the transaction of ``conn`` (``known``: the host's
        listeners as the store kept them before the transaction); its outcome, and the host's open listeners
        after it, to keep (``remember_listening``) once the transaction commits.  Raises ``Resync`` (a delta
        that closes a socket the collector does not hold) or ``RejectedMessage`` (a value the database
        refuses), having written part of the message."""
        listening = self.listening_of(ref, host, known)
        if isinstance(scan.body, convert.Listing):
            counts, listening = apply_snapshot(self, conn, ref, scan.body, moment, listening)
            kind = "snapshot"
        else:
            counts, listening = apply_delta(self, conn, ref, scan.body, moment, listening)
            kind = self.delta_kind(scan, counts)
        self.finish(conn, ref, host, scan, moment, kind, counts, lease)
        outcome = Outcome(acked=True, rows_written=counts[0] + counts[2], moment_us=us(moment), kind=kind)
        return outcome, listening

    def moment(self, scan: convert.Scan, behind: timedelta = timedelta(0)) -> datetime:
        """The scan's time: the agent's, corrected by how far ``behind`` the collector's clock the agent's
        was at its hello (when more than the tolerance), and never later than the collector's clock: a
        clock that runs slightly ahead, or far behind, still dates every change when it happened.
        """
        received = convert.now()
        moment = convert.taken_at(scan.taken_at_us, f"{scan.where}.taken_at_us", self.max_skew, received - behind)
        return min(moment + behind, received)

    @staticmethod
    def check_host(host: Any, scan: convert.Scan, moment: datetime) -> datetime | None:
        """The moment the message is stored at, or None for a message already applied (a replay)."""
        if scan.epoch == host.epoch and scan.seq <= host.seq:
            return None
        if scan.epoch < host.epoch:
            raise RejectedMessage(
                f"{scan.where}.epoch: {scan.epoch} is older than the host's epoch {host.epoch} (another "
                "agent process reports for this host, or its clock went back); start a new epoch",
                "FAILED_PRECONDITION",
                (("sockfleet-epoch", str(host.epoch)),),
            )
        if host.last_taken_at is not None and moment < host.last_taken_at:
            floor: datetime = host.last_taken_at  # history never runs backwards, even when the agent's clock does
            return floor
        return moment

    @staticmethod
    def off_base(host: Any, scan: convert.Scan) -> str | None:
        """Why a delta does not follow the message the collector applied last for the host (``host``: its
        state), the reason a Resync gives; None when it does."""
        if (scan.epoch, scan.base_seq) == (host.epoch, host.seq):
            return None
        return f"delta is based on ({scan.epoch}, {scan.base_seq}), the collector holds ({host.epoch}, {host.seq})"

    @staticmethod
    def delta_kind(scan: convert.Scan, counts: Counts) -> str:
        """An applied delta as observations and metrics count it: one that changes no socket and reports no
        coverage is a heartbeat."""
        return "delta" if any(counts) or scan.coverage is not None else "heartbeat"

    def finish(
        self,
        conn: Connection,
        ref: int,
        host: Any,
        scan: convert.Scan,
        moment: datetime,
        kind: str,
        counts: Counts,
        lease: Lease | None = None,
    ) -> None:
        """What every applied message leaves besides sockets: the host's addresses, its row (its lease held
        longer), an observation."""
        if scan.addresses is not None:
            self._addresses(conn, ref, scan.addresses, moment)
        for statement, params in self.records(ref, host, scan, moment, kind, counts, lease):
            self.later(conn, statement, params)

    @staticmethod
    def records(
        ref: int, host: Any, scan: convert.Scan, moment: datetime, kind: str, counts: Counts, lease: Lease | None = None
    ) -> list[tuple[Executable, dict[str, Any] | list[dict[str, Any]]]]:
        """The statements that record an applied message (``finish``): the host's state, an observation, the
        connections that closed since the previous scan."""
        complete = scan.complete
        if complete is None:
            complete = True if isinstance(scan.body, convert.Listing) else host.complete
        first, last = min(host.first_seen, moment), max(host.last_seen, moment)
        applied = {"epoch": scan.epoch, "seq": scan.seq, "moment": moment, "is_complete": complete}
        held = lease.until() if lease is not None else host.lease_until
        made: list[tuple[Executable, dict[str, Any] | list[dict[str, Any]]]] = [
            (HOST_APPLIED, {"ref": ref, **applied, "first": first, "last": last, "lease_until": held})
        ]
        added, removed, changed = counts
        observed = {"host_ref": ref, "epoch": scan.epoch, "seq": scan.seq, "kind": kind, "taken_at": moment}
        counted = {"added": added, "removed": removed, "changed": changed, "gaps": scan.gaps}
        described = {"complete": complete, "coverage": scan.coverage, "received_at": convert.now()}
        lost = scan.closed.lost if scan.closed is not None else 0
        made.append((OBSERVED, {**observed, **counted, **described, "events_lost": lost}))
        if scan.closed is not None and scan.closed.flows:
            made.append((CLOSED_FLOWS, _closed_rows(ref, scan, moment)))
        return made

    def listening_of(self, ref: int, host: Any, known: _Listening | None = None) -> Listeners | None:
        """The host's open listeners as this collector left them (``known``: as they were before the message's
        transaction), if no other collector has written the host since (``host``: its state, locked)."""
        if known is None:
            known = self._listening.get(ref)
        if known is not None and known[0] == (host.epoch, host.seq, host.last_taken_at):
            return known[1]
        return None

    def remember_listening(self, ref: int, scan: convert.Scan, moment: datetime, listening: Listeners | None) -> None:
        """Keep the host's open listeners after a committed message (see the module's docstring)."""
        if listening is None:
            self._listening.pop(ref, None)
        else:
            self._listening[ref] = ((scan.epoch, scan.seq, moment), listening)


def _closed_rows(ref: int, scan: convert.Scan, moment: datetime) -> list[dict[str, Any]]:
    """A message's closed flows as rows: their times moved as the scan's time was (clamped or corrected for
    the agent's clock), and never after it."""
    assert scan.closed is not None
    shift = moment - convert.utc(scan.taken_at_us)
    rows = []
    for flow in scan.closed.flows:
        first, last = min(flow["first_at"] + shift, moment), min(flow["last_at"] + shift, moment)
        rows.append({**flow, "host_ref": ref, "taken_at": moment, "first_at": min(first, last), "last_at": last})
    return rows


def _check_name(conn: Connection, host_id: str, name: str, held: str | None = None) -> None:
    """A host's name is its own: not another host's, and (``held``: the name it has) not changed by a hello."""
    if held is not None and held != name:
        raise RejectedMessage(
            f"hello.host_name: host {host_id!r} reports as {name!r} but is named {held!r}; "
            f"renaming it takes `sockfleet collector rename --host {host_id} --name {name}`",
            "PERMISSION_DENIED",
        )
    if held is None:
        other = conn.execute(NAMED_OTHER, {"name": name, "host_id": host_id}).first()
        if other is not None:
            raise RejectedMessage(
                f"hello.host_name: {name!r} is the name of another host (id {other.host_id!r})", "PERMISSION_DENIED"
            )
