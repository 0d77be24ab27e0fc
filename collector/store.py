"""Writes: each agent message applied in one transaction, then acknowledged.

* A replayed (epoch, seq) changes nothing and is acknowledged again.
* A Snapshot reconciles the host's open intervals with what it lists: rows of
  sockets gone are closed, new sockets get rows, a changed state or owner closes
  the old row and opens a new one.  Unchanged sockets are not written.
* A Delta must be based on the message the collector applied last for that
  host; otherwise the agent is asked for a Snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from collector import convert
from collector.errors import RejectedMessage
from collector.schema import host_addresses, hosts, observations, sockets
from sockfleet.v1 import fleet_pb2 as pb

CHUNK = 500  # keys per IN (...) list
VERSIONED = (sockets.c.state, sockets.c.peer_inode, sockets.c.uid, sockets.c.user, sockets.c.pid,
             sockets.c.process, sockets.c.cmdline, sockets.c.owners)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: acknowledged (maybe as a replay), or a full snapshot is needed."""

    acked: bool
    replay: bool = False
    resync_reason: str | None = None
    rows_written: int = 0


class _Resync(Exception):
    """Raised inside a transaction to roll it back and ask the agent for a Snapshot."""


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def hello(self, hello: pb.Hello) -> int:
        """Record the host (new or known) and its addresses; returns the host's row id."""
        fields = convert.hello_fields(hello)
        addresses = fields.pop("addresses")
        moment = convert.now()
        with self.engine.begin() as conn:
            row = conn.execute(select(hosts.c.id).where(hosts.c.host_id == fields["host_id"])).first()
            if row is None:
                ref = conn.execute(
                    insert(hosts).values(**fields, epoch=0, seq=0, first_seen=moment, last_seen=moment)
                ).inserted_primary_key[0]  # type: ignore[index]
            else:
                ref = row.id
                conn.execute(update(hosts).where(hosts.c.id == ref).values(**fields))
            self._addresses(conn, ref, addresses, moment)
        return int(ref)

    def _addresses(self, conn: Connection, ref: int, found: list[tuple[int, str, str]], moment: datetime) -> None:
        open_rows = conn.execute(
            select(host_addresses.c.id, host_addresses.c.netns, host_addresses.c.interface, host_addresses.c.address)
            .where(host_addresses.c.host_ref == ref, host_addresses.c.valid_to.is_(None))
        ).all()
        held = {(r.netns, r.interface, r.address): r.id for r in open_rows}
        gone = [row_id for key, row_id in held.items() if key not in set(found)]
        for chunk in _chunks(gone):
            conn.execute(update(host_addresses).where(host_addresses.c.id.in_(chunk)).values(valid_to=moment))
        new = [{"host_ref": ref, "netns": n, "interface": i, "address": a, "valid_from": moment}
               for n, i, a in found if (n, i, a) not in held]
        if new:
            conn.execute(insert(host_addresses), new)

    def apply(self, ref: int, message: pb.Snapshot | pb.Delta) -> Outcome:
        """Apply one Snapshot or Delta of host ``ref`` in one transaction."""
        where = "snapshot" if isinstance(message, pb.Snapshot) else "delta"
        moment = convert.taken_at(message.taken_at_us, f"{where}.taken_at_us")
        if message.epoch == 0 or message.seq == 0:
            raise RejectedMessage(f"{where}: epoch and seq start at 1")
        try:
            with self.engine.begin() as conn:
                host = conn.execute(
                    select(hosts.c.epoch, hosts.c.seq, hosts.c.first_seen, hosts.c.last_seen)
                    .where(hosts.c.id == ref).with_for_update()
                ).one()
                if message.epoch == host.epoch and message.seq <= host.seq:
                    return Outcome(acked=True, replay=True)
                previous = conn.execute(
                    select(func.max(observations.c.taken_at)).where(observations.c.host_ref == ref)
                ).scalar()
                if previous is not None and moment < previous:
                    moment = previous  # history never runs backwards, even when the agent's clock does
                if isinstance(message, pb.Snapshot):
                    counts = self._snapshot(conn, ref, message, moment)
                    kind = "snapshot"
                else:
                    if (message.epoch, message.base_seq) != (host.epoch, host.seq):
                        raise _Resync(f"delta is based on ({message.epoch}, {message.base_seq}), "
                                      f"the collector holds ({host.epoch}, {host.seq})")
                    counts = self._delta(conn, ref, message, moment)
                    kind = "delta" if any(counts) or message.HasField("coverage") else "heartbeat"
                coverage, complete = (None, True)
                if message.HasField("coverage"):
                    coverage, complete = convert.coverage_json(message.coverage)
                elif kind != "snapshot":
                    complete = self._last_complete(conn, ref)
                conn.execute(update(hosts).where(hosts.c.id == ref).values(
                    epoch=message.epoch, seq=message.seq,
                    first_seen=min(host.first_seen, moment), last_seen=max(host.last_seen, moment)))
                conn.execute(insert(observations).values(
                    host_ref=ref, epoch=message.epoch, seq=message.seq, kind=kind, taken_at=moment,
                    received_at=convert.now(), added=counts[0], removed=counts[1], changed=counts[2],
                    complete=complete, coverage=coverage,
                ))
        except _Resync as resync:
            return Outcome(acked=False, resync_reason=str(resync))
        return Outcome(acked=True, rows_written=counts[0] + counts[2])

    def _last_complete(self, conn: Connection, ref: int) -> bool:
        last = conn.execute(
            select(observations.c.complete).where(observations.c.host_ref == ref)
            .order_by(observations.c.id.desc()).limit(1)
        ).scalar()
        return bool(last) if last is not None else True

    def _snapshot(self, conn: Connection, ref: int, message: pb.Snapshot, moment: datetime) -> tuple[int, int, int]:
        rows = [convert.socket_row(sock, f"snapshot.sockets[{i}]") for i, sock in enumerate(message.sockets)]
        listed = {row.key: row for row in rows}
        if len(listed) != len(rows):
            raise RejectedMessage("snapshot.sockets: the same socket is listed twice")
        held = {
            r.key: (r.id, tuple(r)[2:])
            for r in conn.execute(
                select(sockets.c.id, sockets.c.key, *VERSIONED)
                .where(sockets.c.host_ref == ref, sockets.c.valid_to.is_(None))
            )
        }
        closing = [row_id for key, (row_id, versioned) in held.items()
                   if key not in listed or listed[key].versioned != versioned]
        opening = [row for row in rows if row.key not in held or held[row.key][1] != row.versioned]
        self._close_ids(conn, closing, moment)
        self._insert(conn, ref, opening, moment)
        changed = sum(1 for row in opening if row.key in held)
        return len(opening) - changed, len(closing) - changed, changed

    def _delta(self, conn: Connection, ref: int, message: pb.Delta, moment: datetime) -> tuple[int, int, int]:
        added = [convert.socket_row(s, f"delta.added[{i}]") for i, s in enumerate(message.added)]
        changed = [convert.socket_row(s, f"delta.changed[{i}]") for i, s in enumerate(message.changed)]
        removed = [convert.key_row(k, f"delta.removed[{i}]")[0] for i, k in enumerate(message.removed)]
        keys = [row.key for row in added] + [row.key for row in changed] + removed
        if len(set(keys)) != len(keys):
            raise RejectedMessage("delta: a socket appears twice among added, changed and removed")
        if added and self._open_count(conn, ref, [row.key for row in added]):
            raise _Resync("delta adds a socket the collector already holds")
        closing = removed + [row.key for row in changed]
        if self._close_keys(conn, ref, closing, moment) != len(closing):
            raise _Resync("delta removes or changes a socket the collector does not hold")
        self._insert(conn, ref, added + changed, moment)
        return len(added), len(removed), len(changed)

    def _open_count(self, conn: Connection, ref: int, keys: Sequence[str]) -> int:
        total = 0
        for chunk in _chunks(keys):
            total += conn.execute(
                select(func.count()).select_from(sockets)
                .where(sockets.c.host_ref == ref, sockets.c.key.in_(chunk), sockets.c.valid_to.is_(None))
            ).scalar_one()
        return total

    def _close_keys(self, conn: Connection, ref: int, keys: Sequence[str], moment: datetime) -> int:
        closed = 0
        for chunk in _chunks(keys):
            result = conn.execute(
                update(sockets)
                .where(and_(sockets.c.host_ref == ref, sockets.c.key.in_(chunk), sockets.c.valid_to.is_(None)))
                .values(valid_to=moment)
            )
            closed += result.rowcount
        return closed

    def _close_ids(self, conn: Connection, ids: Sequence[int], moment: datetime) -> None:
        for chunk in _chunks(ids):
            conn.execute(update(sockets).where(sockets.c.id.in_(chunk)).values(valid_to=moment))

    def _insert(self, conn: Connection, ref: int, rows: Iterable[convert.SocketRow], moment: datetime) -> None:
        values: list[dict[str, Any]] = [{**row.columns(), "host_ref": ref, "valid_from": moment} for row in rows]
        if values:
            conn.execute(insert(sockets), values)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
