"""A large snapshot applied in steps, so that one big host never holds up the other agents.

A snapshot of a million sockets takes tens of seconds to check and write; in one transaction it would
hold SQLite's only writer (and the collector's event loop) all that time, and every other agent would
wait for its acknowledgement.  So a large snapshot is applied in short steps, and the collector lets
other streams' messages through between two steps:

1. every socket is checked (the whole snapshot is refused before anything is written if one is bad)
   and filed into one of N groups by its key digest, so that a group's stored open rows are one range
   of the index ``(host_ref, key)``;
2. each group, in a transaction of its own: its stored open rows are read and compared, rows of sockets
   gone or changed are closed, rows of new or changed sockets opened, every change dated at the
   snapshot's scan time;
3. the host's flows are moved by the net change of each flow, in groups of flows;
4. a last transaction records the scan: the host's state, its addresses, the observation.  Only then is
   the snapshot acknowledged.

Between the first group and the last step, questions may see some groups of the new scan and not
others; each row's times are right all the same.  A collector that stops half-way leaves rows that
are each true (closed when the scan found them gone, opened when it found them new); the agent then
sends a full snapshot again, and the steps already done change nothing.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, select

from sockfleet.collector import convert, flows, rules, spans
from sockfleet.collector.schema import sockets
from sockfleet.collector.store import Outcome, Resync, Store, us
from sockfleet.collector.store.leases import Lease
from sockfleet.collector.store.statements import (
    CLOSE_IDS,
    HOST,
    HOST_FOR_UPDATE,
    SOCKETS_BULK,
    STEP_SOCKETS,
    VERSIONED,
    chunks,
)
from sockfleet.collector.store.writing import file_flows

# A group's stored open rows: one range of the open rows' unique index (host_ref, key); keys compare as
# plain text (the column's collation is "C" on PostgreSQL).
OPEN_IN_RANGE = select(sockets.c.id, sockets.c.key, *VERSIONED).where(
    sockets.c.host_ref == bindparam("ref"),
    sockets.c.valid_to.is_(None),
    sockets.c.key >= bindparam("low"),
    sockets.c.key < bindparam("high"),
)
OPEN_FROM = select(sockets.c.id, sockets.c.key, *VERSIONED).where(
    sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None), sockets.c.key >= bindparam("low")
)
OPEN_COUNT = (
    select(func.count())
    .select_from(sockets)
    .where(and_(sockets.c.host_ref == bindparam("ref"), sockets.c.valid_to.is_(None)))
)


def group_of(digest: str, count: int) -> int:
    """Which of ``count`` groups a key digest falls in: groups are ranges of the digest's first 32 bits."""
    return int(digest[:8], 16) * count >> 32


def bounds(group: int, count: int) -> tuple[str, str | None]:
    """The range of digests ``[low, high)`` of a group (no upper bound for the last)."""

    def edge(index: int) -> str:
        return f"{-(-(index << 32) // count):08x}"

    return edge(group), (edge(group + 1) if group + 1 < count else None)


def apply_in_steps(
    store: Store, ref: int, scan: convert.Scan, behind: timedelta = timedelta(0), lease: Lease | None = None
) -> Iterator[Outcome | None]:
    """Yield None after each step, and the Outcome last.  Raises ``RejectedMessage`` before any write, and
    before the last step when a newer stream took the host's ``lease``."""
    assert isinstance(scan.body, convert.Listing)
    listing = scan.body
    at = store.moment(scan, behind)
    with store.engine.connect() as conn:
        host = conn.execute(HOST, {"ref": ref}).one()
    moment = store.admitted(host, scan, at, lease)
    if moment is None:
        yield Outcome(acked=True, replay=True)
        return
    groups, listening = yield from _filed(listing, max(1, -(-len(listing) // STEP_SOCKETS)))
    store.remember_listening(ref, scan, moment, None)
    steps = _Steps(store, ref, moment, listing, frozenset(listening), lease)
    try:
        counts = yield from steps.groups_written(groups)
        yield from steps.flows_moved()
        with store.engine.begin() as conn:
            current = conn.execute(HOST_FOR_UPDATE, {"ref": ref}).one()
            if lease is not None:
                lease.check(current)
            written = (current.epoch, current.seq) != (host.epoch, host.seq)
            if written or conn.execute(OPEN_COUNT, {"ref": ref}).scalar_one() != len(listing):
                raise Resync("another stream wrote this host while its large snapshot was applied")
            store.finish(conn, ref, current, scan, moment, "snapshot", counts, lease)
    except Resync as resync:
        # Another stream of the same host wrote it meanwhile: what was written is true row by row, and the
        # agent's next full snapshot settles the rest.
        yield Outcome(acked=False, resync_reason=str(resync))
        return
    store.remember_listening(ref, scan, moment, frozenset(listening))
    yield Outcome(acked=True, rows_written=counts[0] + counts[2], moment_us=us(moment), kind="snapshot")


Group = dict[str, int]  # key digest -> place in the listing


def _filed(listing: convert.Listing, count: int) -> Generator[None, None, tuple[list[Group], set[flows.Listener]]]:
    """Every socket checked and filed into its group by key digest, and the host's listeners; a socket
    listed twice refuses the whole snapshot."""
    groups: list[Group] = [{} for _ in range(count)]
    listening: set[flows.Listener] = set()
    for digest, number in listing.indexed():
        groups[group_of(digest, count)][digest] = number
        row = listing.row(number)
        netns, proto, _, _, _, laddr, lport, *_ = row.identity
        if rules.accepts(proto, row.versioned[0]):
            listening.add(flows.listener_of(netns, proto, laddr, lport))
        if number % (2 * STEP_SOCKETS) == 0:
            yield None
    return groups, listening


class _Steps:
    """The writing steps of one snapshot, and what they learn on the way: each flow's net change, and the
    identity of each socket that moves a flow."""

    def __init__(
        self,
        store: Store,
        ref: int,
        moment: datetime,
        listing: convert.Listing,
        listening: frozenset[flows.Listener],
        lease: Lease | None = None,
    ) -> None:
        self.store, self.ref, self.moment, self.listing, self.listening = store, ref, moment, listing, listening
        self.lease = lease  # checked (and extended) by every step: a host taken over meanwhile stops the steps
        self.changes: dict[str, int] = {}
        self.identities: dict[str, tuple[Any, ...]] = {}

    def groups_written(self, groups: list[Group]) -> Generator[None, None, tuple[int, int, int]]:
        """Each group in a transaction of its own: (added, removed, changed) over all of them."""
        added = removed = changed = 0
        for number, group in enumerate(groups):
            with self.store.engine.begin() as conn:
                if self.lease is not None:
                    self.lease.hold_on(conn, self.ref)
                counts = self.group(conn, group, bounds(number, len(groups)))
            added, removed, changed = added + counts[0], removed + counts[1], changed + counts[2]
            groups[number] = {}  # written: let it go
            yield None
        return added, removed, changed

    def flows_moved(self) -> Iterator[None]:
        """The host's flows moved by their net change, in groups of flows."""
        moving = [key for key, change in self.changes.items() if change]
        for chunk in chunks(moving, STEP_SOCKETS):
            with self.store.engine.begin() as conn:
                if self.lease is not None:
                    self.lease.hold_on(conn, self.ref)
                moves = {key: self.changes[key] for key in chunk}
                self.store.move_flows(conn, self.ref, moves, self.identities, self.moment)
            yield None

    def group(self, conn: Any, group: Group, edges: tuple[str, str | None]) -> tuple[int, int, int]:
        """One group's sockets against its stored open rows: (added, removed, changed)."""
        low, high = edges
        query, params = (
            (OPEN_FROM, {"ref": self.ref, "low": low})
            if high is None
            else (OPEN_IN_RANGE, {"ref": self.ref, "low": low, "high": high})
        )
        held = {r[1]: (r[0], tuple(r[2:])) for r in conn.execute(query, params)}
        opening = self.listing.opening(held, group.items())
        changed_keys = {row.key for row in opening}
        closing = [row_id for key, (row_id, _) in held.items() if key not in group or key in changed_keys]
        cutoffs = spans.cutoffs(self.moment)
        for chunk in chunks(closing):
            for left in conn.execute(CLOSE_IDS, {"ids": list(chunk), "moment": self.moment, **cutoffs}):
                if left.flow is not None:
                    self.changes[left.flow] = self.changes.get(left.flow, 0) - 1
        stamp = self.store.stamp(self.moment)
        values = [(self.ref, stamp, *row.values) for row in opening]
        if values:
            keys = file_flows(values, self.listening, self.changes, self.identities)
            self.store.write(conn, SOCKETS_BULK, [(*value, key) for value, key in zip(values, keys, strict=True)])
        changed = sum(1 for row in opening if row.key in held)
        return len(opening) - changed, len(closing) - changed, changed
