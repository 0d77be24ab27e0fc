"""Scans waiting for the collector: a bounded queue, kept on disk while the collector is away.

Every scan becomes a record: a Delta on the previous scan, with the scan's own time, coverage and (when
they changed) the host's addresses, numbered by its ``seq``.  The sender takes records in order and
removes each once the collector has acknowledged it; the state they were based on is the *base* (what
the collector holds).  After a reconnection the first record goes out as a full Snapshot of base +
record, as the protocol wants.

With a folder, the spool is written to disk (``agent.segments``) as soon as a record is not
acknowledged straight away (the collector is away or slow).  A disk that is full, or fails, costs
nothing while the agent runs: what does not fit waits in memory, and is written when space returns.
When the spool is over its bound, the two oldest waiting records are composed into one: the scans in
between are lost, and the composed record's coverage says so (a Gap).  So does the first scan after a
restart that found scans waiting: the time between the last of them and the restart was not scanned,
or its scans were lost with the process.  A record the collector refuses as invalid is dropped the
same way (``drop_head``), and the next record says so.
"""

from __future__ import annotations

import logging
import os
import stat
import weakref
from collections import deque
from pathlib import Path

from sockfleet.agent import convert
from sockfleet.agent.delta import Changes
from sockfleet.agent.errors import UsageError
from sockfleet.agent.segments import SEGMENT_BYTES, Segments, own, unframe
from sockfleet.v1 import fleet_pb2 as pb

log = logging.getLogger("sockfleet.agent")
FULL = "agent spool full"
State = dict[bytes, pb.Socket]
Address = convert.Address


def key_bytes(key: pb.SocketKey) -> bytes:
    return key.SerializeToString(deterministic=True)


def apply(state: State, delta: pb.Delta) -> State:
    """``state`` after ``delta``, in place."""
    for sock in (*delta.added, *delta.changed):
        state[key_bytes(sock.key)] = sock
    for key in delta.removed:
        state.pop(key_bytes(key), None)
    return state


# What a socket's waiting change becomes when a later change of it follows; any other pair is the later one.
_THEN: dict[tuple[str | None, str], str] = {
    ("added", "removed"): "gone",
    ("added", "changed"): "added",
    ("removed", "added"): "changed",
}


def compose(first: pb.Delta, second: pb.Delta) -> pb.Delta:
    """One Delta with the effect of ``first`` then ``second``, at ``second``'s time, number and coverage."""
    ops: dict[bytes, tuple[str, pb.Socket | pb.SocketKey]] = {}
    for delta in (first, second):
        for kind, items in (("added", delta.added), ("changed", delta.changed), ("removed", delta.removed)):
            for item in items:
                key = key_bytes(item.key if isinstance(item, pb.Socket) else item)
                before = ops[key][0] if key in ops else None
                ops[key] = (_THEN.get((before, kind), kind), item)
    merged = pb.Delta(seq=second.seq, taken_at_us=second.taken_at_us)
    merged.coverage.CopyFrom(second.coverage)
    del merged.coverage.gaps[:]
    merged.coverage.gaps.extend([*first.coverage.gaps, *second.coverage.gaps])
    if first.HasField("closed") or second.HasField("closed"):
        merged.closed.CopyFrom(convert.merge_closings(first.closed, second.closed))
    latest = next((source for source in (second, first) if source.HasField("addresses")), None)
    if latest is not None:
        merged.addresses.CopyFrom(latest.addresses)
    for op, item in ops.values():
        if op == "removed":
            merged.removed.append(item if isinstance(item, pb.SocketKey) else item.key)
        elif op != "gone" and isinstance(item, pb.Socket):
            (merged.added if op == "added" else merged.changed).append(item)
    return merged


class Spool:
    """The waiting scans of one host (``host``: its id); with a folder, kept there too, by one agent at a time."""

    def __init__(self, folder: str | None = None, max_bytes: int = 64 * 1024 * 1024, host: str | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self.host = host
        self.max_bytes = max_bytes
        self.base: State = {}
        self.base_addresses: list[pb.InterfaceAddress] | None = None  # the host's addresses as of the base
        self.base_taken_at_us = 0
        self.base_number = 0  # the last record folded into the base
        self.next_number = 1
        self.records: deque[pb.Delta] = deque()
        self.sizes: deque[int] = deque()
        self.size = 0  # bytes of the waiting records, kept as they come and go
        self.tail: dict[convert.Key, convert.Entry] | None = None  # the last scan, to diff the next one
        self.tail_addresses: list[Address] | None = None  # the last scan's addresses, to tell a change
        self.gaps: list[pb.Gap] = []  # for the next record's coverage
        self.restarted_after_us: int | None = None  # the last waiting scan of an earlier run
        self.disk = Segments(self.folder) if self.folder is not None else None
        self.persisting = False  # the disk holds the base, and the records up to ``disk.last``
        self.failing: str | None = None  # why the disk refused the last write
        self.acked_on_disk = 0  # bytes of acknowledged records still in segments
        self.lock: int | None = None
        if self.folder is not None:
            _claim(self.folder)
            assert self.disk is not None
            self.lock = self.disk.lock()
            if self.lock is None:
                raise UsageError(f"--spool {self.folder}: another agent uses this folder")
            weakref.finalize(self, self.disk.unlock)  # the folder is free again once this spool is gone
            self._load()
            owner = self.disk.owner()
            if self.records and host is not None and owner is not None and owner != host:
                raise UsageError(
                    f"--spool {self.folder}: it holds scans of host {owner!r}, not of {host!r}; "
                    "give each agent a folder of its own"
                )

    def __len__(self) -> int:
        return len(self.records)

    # The producer: one record per scan.

    def add(
        self,
        current: dict[convert.Key, convert.Entry],
        changes: Changes | None,
        taken_at_us: int,
        coverage: pb.Coverage,
        addresses: list[Address] | None = None,
        closed: pb.Closings | None = None,
    ) -> None:
        """Queue one scan; ``changes`` is the diff from the previous scan (None: compute it from the spool);
        ``closed``: the connections that closed since the previous scan."""
        delta = pb.Delta(seq=self.next_number, taken_at_us=taken_at_us)
        if closed is not None:
            delta.closed.CopyFrom(closed)
        self.next_number += 1
        delta.coverage.CopyFrom(coverage)
        if self.restarted_after_us is not None:
            self.gaps.append(
                pb.Gap(
                    from_us=self.restarted_after_us + 1,
                    to_us=max(taken_at_us - 1, 0),
                    reason="agent restarted: no scan kept in between",
                )
            )
            self.restarted_after_us = None
        delta.coverage.gaps.extend(self.gaps)
        self.gaps = []
        if addresses is not None and addresses != self.tail_addresses:
            delta.addresses.items.extend(convert.interface_addresses(addresses))
            self.tail_addresses = addresses
        if changes is None:
            self._full_diff(current, delta)
        else:
            delta.added.extend(convert.socket(k, e) for k, e in changes.added)
            delta.removed.extend(convert.socket_key(k) for k in changes.removed)
            delta.changed.extend(convert.socket(k, e) for k, e in changes.changed)
        self.tail = current
        self.records.append(delta)
        self.sizes.append(delta.ByteSize())
        self.size += self.sizes[-1]
        self._bound()
        if self.persisting:
            self._sync()
        elif len(self.records) > 1:
            self.persist()  # the collector has not taken the previous scan: keep what waits on disk

    def _full_diff(self, current: dict[convert.Key, convert.Entry], delta: pb.Delta) -> None:
        """After a restart the previous scan is known only as messages: diff against base + records."""
        known = self.state()
        fresh = {key_bytes(convert.socket_key(k)): convert.socket(k, e) for k, e in current.items()}
        for key, sock in fresh.items():
            old = known.get(key)
            if old is None:
                delta.added.append(sock)
            elif _versioned(old) != _versioned(sock):
                delta.changed.append(sock)
        delta.removed.extend(sock.key for key, sock in known.items() if key not in fresh)

    def _bound(self) -> None:
        """Compose the oldest waiting records while over the bound."""
        while self.size > self.max_bytes and len(self.records) > 2:
            first, second = self.records.popleft(), self.records.popleft()
            self.size -= self.sizes.popleft() + self.sizes.popleft()
            merged = compose(first, second)
            # One range covers every scan dropped so far: from the earliest to this one.
            start = min([first.taken_at_us, *(g.from_us for g in merged.coverage.gaps if g.reason == FULL)])
            kept = [g for g in merged.coverage.gaps if g.reason != FULL]
            del merged.coverage.gaps[:]
            merged.coverage.gaps.extend(kept)
            merged.coverage.gaps.add(from_us=start, to_us=first.taken_at_us, reason=FULL)
            self.records.appendleft(merged)
            self.sizes.appendleft(merged.ByteSize())
            self.size += self.sizes[0]
            log.warning("spool over %d bytes: dropped the scan taken at %d µs", self.max_bytes, first.taken_at_us)
            if self.persisting and self.disk is not None:
                self.disk.replace(first.seq, merged)

    # The sender: the oldest waiting record, as a Delta on the base or as a full Snapshot.

    def head(self) -> pb.Delta | None:
        return self.records[0] if self.records else None

    def head_snapshot(self) -> pb.Snapshot:
        head = self.records[0]
        state = apply(dict(self.base), head)
        snapshot = pb.Snapshot(taken_at_us=head.taken_at_us, sockets=list(state.values()))
        snapshot.coverage.CopyFrom(head.coverage)
        if head.HasField("closed"):
            snapshot.closed.CopyFrom(head.closed)
        addresses = head.addresses.items if head.HasField("addresses") else self.base_addresses
        if addresses is not None:
            snapshot.addresses.items.extend(addresses)
        return snapshot

    def pop(self) -> None:
        """The collector acknowledged the head: it becomes part of the base."""
        head = self.records.popleft()
        self.size -= self.sizes.popleft()
        self._fold(head)
        if not self.persisting or self.disk is None:
            return
        if not self.records:
            self._clear_disk()
            return
        if head.seq in self.disk.index:
            self.acked_on_disk += self.disk.index[head.seq][2]
        try:
            self.disk.set_acked(head.seq)
            if self.acked_on_disk > 4 * SEGMENT_BYTES:  # fold what was acknowledged into a new base file
                self.disk.write_base(self._base_message())
                self.acked_on_disk = 0
        except OSError as exc:
            self._failed(exc)

    def drop_head(self, reason: str) -> None:
        """The collector refused the head as invalid: it is dropped, and the next record records the gap."""
        head = self.records[0]
        gaps = [
            *head.coverage.gaps,
            pb.Gap(
                from_us=head.taken_at_us, to_us=head.taken_at_us, reason=f"refused by the collector: {reason}"[:4096]
            ),
        ]
        self.pop()
        if self.records:
            # In memory only: the gap is news for the collector, not something a restart must keep.
            self.records[0].coverage.gaps.extend(gaps)
        else:
            self.gaps.extend(gaps)

    def _fold(self, record: pb.Delta) -> None:
        apply(self.base, record)
        self.base_taken_at_us = record.taken_at_us
        self.base_number = record.seq
        if record.HasField("addresses"):
            self.base_addresses = list(record.addresses.items)

    def state(self) -> State:
        state = dict(self.base)
        for record in self.records:
            apply(state, record)
        return state

    # Disk.

    def persist(self) -> None:
        """Keep the base and every waiting record on disk (from here on, every new record too)."""
        if self.disk is None:
            return
        if not self.persisting:
            try:
                self.disk.clear()
                if self.host is not None:
                    self.disk.set_owner(self.host)
                self.disk.write_base(self._base_message())
            except OSError as exc:
                self._failed(exc)
                self.disk.mark_unsaved()
                return
            self.persisting = True
            self.acked_on_disk = 0
        self._sync()

    def _sync(self) -> None:
        """Write the records that wait in memory only, in order, as far as the disk takes them."""
        assert self.disk is not None
        try:
            for record in self.records:
                if record.seq > self.disk.last:
                    self.disk.append(record)
        except OSError as exc:
            self._failed(exc)
            return
        if self.failing is not None:
            log.warning("spool: the disk takes scans again (%s before)", self.failing)
            self.failing = None

    def _failed(self, exc: OSError) -> None:
        if self.failing is None:
            waiting = sum(1 for r in self.records if self.disk is None or r.seq > self.disk.last)
            log.warning(
                "spool: cannot write to %s (%s); %d scans wait in memory only, lost if the agent stops",
                self.folder,
                exc.strerror or exc,
                waiting,
            )
        self.failing = exc.strerror or str(exc)

    def _base_message(self) -> pb.Snapshot:
        base = pb.Snapshot(seq=self.base_number, taken_at_us=self.base_taken_at_us, sockets=list(self.base.values()))
        if self.base_addresses is not None:
            base.addresses.items.extend(self.base_addresses)
        return base

    def _clear_disk(self) -> None:
        assert self.disk is not None
        try:
            self.disk.clear()
        except OSError as exc:
            self._failed(exc)
        self.persisting = False

    def _load(self) -> None:
        assert self.disk is not None
        loaded = self.disk.load()
        if loaded is None:
            since = self.disk.unsaved_since()
            if since is not None:  # scans waited in memory only when the last run stopped: they are lost
                self.restarted_after_us = int(since * 1e6)
            self._load_earlier_format()
            return
        base = loaded.base
        self.base = {key_bytes(s.key): s for s in base.sockets}
        self.base_taken_at_us = base.taken_at_us
        self.base_number = base.seq
        if base.HasField("addresses"):
            self.base_addresses = list(base.addresses.items)
        for record in loaded.records:
            if record.seq <= loaded.acked:
                self._fold(record)
            else:
                self.records.append(record)
                self.sizes.append(record.ByteSize())
                self.size += self.sizes[-1]
        self.next_number = max(self.base_number, self.disk.last) + 1
        self.persisting = True
        if not self.records:
            self._clear_disk()
            return
        self.restarted_after_us = self.records[-1].taken_at_us
        log.info("spool: %d scans waiting from an earlier run", len(self.records))

    def _load_earlier_format(self) -> None:
        """A spool left by an agent before segments (one ``spool.log`` and a ``spool.head`` count)."""
        assert self.folder is not None
        path = self.folder / "spool.log"
        if not path.exists():
            return
        found, _ = unframe(path.read_bytes())
        messages = [message for message, _, _ in found]
        if not messages or not messages[0].HasField("snapshot"):
            os.replace(path, path.with_suffix(".log.bad"))
            return
        try:
            done = int((self.folder / "spool.head").read_text() or "0")
        except (OSError, ValueError):
            done = 0
        self.base = {key_bytes(s.key): s for s in messages[0].snapshot.sockets}
        self.base_taken_at_us = messages[0].snapshot.taken_at_us
        for index, message in enumerate(messages[1:]):
            record = message.delta
            record.seq = self.next_number
            self.next_number += 1
            if index < done:
                self._fold(record)
            else:
                self.records.append(record)
                self.sizes.append(record.ByteSize())
                self.size += self.sizes[-1]
        if self.records:
            self.restarted_after_us = self.records[-1].taken_at_us
            self.persist()
        if self.persisting or not self.records:
            for name in ("spool.log", "spool.head"):
                (self.folder / name).unlink(missing_ok=True)


def _claim(folder: Path) -> None:
    """Make the spool's folder (mode 0700: the scans name every process and command line), or take an
    existing one that holds nothing but a spool's files; a folder others share is never taken, changed or
    emptied."""
    try:
        folder.mkdir(mode=0o700)
        return
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise UsageError(f"--spool {folder}: the folder {folder.parent} does not exist") from None
    if not folder.is_dir():
        raise UsageError(f"--spool {folder}: not a folder")
    mode = folder.stat().st_mode
    foreign = sorted(path.name for path in folder.iterdir() if not own(path.name))
    if foreign or mode & (stat.S_ISVTX | stat.S_IWOTH):
        what = f"holds files that are not a spool's ({', '.join(foreign[:3])})" if foreign else "is shared"
        raise UsageError(f"--spool {folder}: it {what}; give the agent a folder of its own")
    if folder.stat().st_uid == os.geteuid() and mode & 0o077:
        os.chmod(folder, 0o700)


def _versioned(sock: pb.Socket) -> bytes:
    comparable = pb.Socket()
    comparable.CopyFrom(sock)
    comparable.ClearField("rx_queue")
    comparable.ClearField("tx_queue")
    return comparable.SerializeToString(deterministic=True)
