"""Scans waiting for the collector: a bounded queue, kept on disk while the collector is away.

Every scan becomes a record: a Delta on the previous scan, with the scan's own time and coverage.
The sender takes records in order and removes each once the collector has acknowledged it; the
state they were based on is the *base* (what the collector holds).  After a reconnection the first
record goes out as a full Snapshot of base + record, as the protocol wants.

With a folder, the spool is written to disk as soon as a record is not acknowledged straight away
(the collector is away or slow)::

    spool.log   records of  u32 length | u32 crc32 | AgentMessage bytes
                the first is a Snapshot (the base), the rest Deltas, each on the one before
    spool.head  how many of those Deltas the collector has acknowledged (replaced by rename)

A torn last record (the agent killed while writing it) fails its length or CRC check and is cut
off when the spool is loaded; everything before it is kept.  When the spool is over its bound,
the two oldest waiting records are composed into one: the scans in between are lost, and the
composed record's coverage says so (a Gap).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import deque
from pathlib import Path

from agent import convert
from agent.delta import Changes
from sockfleet.v1 import fleet_pb2 as pb

log = logging.getLogger("sockfleet.agent")
HEADER = struct.Struct("<II")
State = dict[bytes, pb.Socket]


def key_bytes(key: pb.SocketKey) -> bytes:
    return key.SerializeToString(deterministic=True)


def apply(state: State, delta: pb.Delta) -> State:
    """``state`` after ``delta``, in place."""
    for sock in (*delta.added, *delta.changed):
        state[key_bytes(sock.key)] = sock
    for key in delta.removed:
        state.pop(key_bytes(key), None)
    return state


def compose(first: pb.Delta, second: pb.Delta) -> pb.Delta:
    """One Delta with the effect of ``first`` then ``second``, at ``second``'s time and coverage."""
    ops: dict[bytes, tuple[str, pb.Socket | pb.SocketKey]] = {}
    for delta in (first, second):
        for kind, items in (("added", delta.added), ("changed", delta.changed), ("removed", delta.removed)):
            for item in items:
                key = key_bytes(item.key if isinstance(item, pb.Socket) else item)
                before = ops.get(key, (None, item))[0]
                if kind == "removed":
                    ops[key] = ("gone", item) if before == "added" else ("removed", item)
                elif kind == "added":
                    ops[key] = ("changed", item) if before == "removed" else ("added", item)
                else:
                    ops[key] = ("added", item) if before == "added" else ("changed", item)
    merged = pb.Delta(taken_at_us=second.taken_at_us)
    merged.coverage.CopyFrom(second.coverage)
    earlier = [*first.coverage.gaps, *second.coverage.gaps]
    del merged.coverage.gaps[:]
    merged.coverage.gaps.extend(earlier)
    for op, item in ops.values():
        if op == "removed":
            merged.removed.append(item if isinstance(item, pb.SocketKey) else item.key)
        elif op != "gone" and isinstance(item, pb.Socket):
            (merged.added if op == "added" else merged.changed).append(item)
    return merged


class Spool:
    def __init__(self, folder: str | None = None, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.folder = Path(folder) if folder else None
        self.max_bytes = max_bytes
        self.base: State = {}
        self.base_taken_at_us = 0
        self.records: deque[pb.Delta] = deque()
        self.sizes: deque[int] = deque()
        self.size = 0  # bytes of the waiting records, kept as they come and go
        self.tail: dict[convert.Key, convert.Entry] | None = None  # the last scan, to diff the next one
        self.persisting = False
        self.acknowledged_on_disk = 0
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._load()

    def __len__(self) -> int:
        return len(self.records)

    # The producer: one record per scan.

    def add(self, current: dict[convert.Key, convert.Entry], changes: Changes | None, taken_at_us: int,
            coverage: pb.Coverage) -> None:
        """Queue one scan; ``changes`` is the diff from the previous scan (None: compute it from the spool)."""
        delta = pb.Delta(taken_at_us=taken_at_us)
        delta.coverage.CopyFrom(coverage)
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
        if self._bound():
            if self.persisting:
                self.persist()  # the oldest records were composed: rewrite, the new record included
        elif self.persisting:
            self._append_to_disk(delta)
        if not self.persisting and len(self.records) > 1:
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

    def _bound(self) -> bool:
        """Compose the oldest waiting records while over the bound; whether any were."""
        composed = False
        while self.size > self.max_bytes and len(self.records) > 2:
            composed = True
            first, second = self.records.popleft(), self.records.popleft()
            self.size -= self.sizes.popleft() + self.sizes.popleft()
            merged = compose(first, second)
            # One range covers every scan dropped so far: from the earliest to this one.
            start = min([first.taken_at_us, *(g.from_us for g in merged.coverage.gaps)])
            del merged.coverage.gaps[:]
            merged.coverage.gaps.add(from_us=start, to_us=first.taken_at_us, reason="agent spool full")
            self.records.appendleft(merged)
            self.sizes.appendleft(merged.ByteSize())
            self.size += self.sizes[0]
            log.warning("spool over %d bytes: dropped the scan taken at %d µs", self.max_bytes, first.taken_at_us)
        return composed

    # The sender: the oldest waiting record, as a Delta on the base or as a full Snapshot.

    def head(self) -> pb.Delta | None:
        return self.records[0] if self.records else None

    def head_snapshot(self) -> pb.Snapshot:
        head = self.records[0]
        state = apply(dict(self.base), head)
        snapshot = pb.Snapshot(taken_at_us=head.taken_at_us, sockets=list(state.values()))
        snapshot.coverage.CopyFrom(head.coverage)
        return snapshot

    def pop(self) -> None:
        """The collector acknowledged the head: it becomes part of the base."""
        head = self.records.popleft()
        self.size -= self.sizes.popleft()
        apply(self.base, head)
        self.base_taken_at_us = head.taken_at_us
        if self.persisting:
            if self.records:
                self.acknowledged_on_disk += 1
                self._write_atomically("spool.head", str(self.acknowledged_on_disk).encode())
            else:
                self._clear_disk()

    def state(self) -> State:
        state = dict(self.base)
        for record in self.records:
            apply(state, record)
        return state

    # Disk.

    def persist(self) -> None:
        """Write base and waiting records to disk (from here on every new record is appended)."""
        if self.folder is None:
            return
        base = pb.Snapshot(taken_at_us=self.base_taken_at_us, sockets=list(self.base.values()))
        chunks = [_frame(pb.AgentMessage(snapshot=base))]
        chunks += [_frame(pb.AgentMessage(delta=record)) for record in self.records]
        self._write_atomically("spool.log", b"".join(chunks))
        self._write_atomically("spool.head", b"0")
        self.acknowledged_on_disk = 0
        self.persisting = True

    def _append_to_disk(self, delta: pb.Delta) -> None:
        assert self.folder is not None
        with open(self.folder / "spool.log", "ab") as file:
            file.write(_frame(pb.AgentMessage(delta=delta)))
            file.flush()
            os.fsync(file.fileno())

    def _clear_disk(self) -> None:
        assert self.folder is not None
        for name in ("spool.log", "spool.head"):
            (self.folder / name).unlink(missing_ok=True)
        self.persisting = False

    def _write_atomically(self, name: str, data: bytes) -> None:
        assert self.folder is not None
        temporary = self.folder / f".{name}.tmp"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.folder / name)

    def _load(self) -> None:
        assert self.folder is not None
        path = self.folder / "spool.log"
        if not path.exists():
            return
        data = path.read_bytes()
        messages, good = _unframe(data)
        if good < len(data):
            log.warning("spool: cut off a torn record at byte %d of %d", good, len(data))
        if not messages or not messages[0].HasField("snapshot"):
            log.warning("spool: %s does not start with a snapshot; set aside as %s.bad", path, path.name)
            os.replace(path, path.with_suffix(".log.bad"))
            return
        try:
            done = int((self.folder / "spool.head").read_text() or "0")
        except (OSError, ValueError):
            done = 0
        base = messages[0].snapshot
        self.base = {key_bytes(s.key): s for s in base.sockets}
        self.base_taken_at_us = base.taken_at_us
        for index, message in enumerate(messages[1:]):
            if index < done:
                apply(self.base, message.delta)
                self.base_taken_at_us = message.delta.taken_at_us
            else:
                self.records.append(message.delta)
                self.sizes.append(message.delta.ByteSize())
                self.size += self.sizes[-1]
        log.info("spool: %d scans waiting from an earlier run", len(self.records))
        self.persist()  # rewrite without the acknowledged and torn records


def _frame(message: pb.AgentMessage) -> bytes:
    payload = message.SerializeToString()
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _unframe(data: bytes) -> tuple[list[pb.AgentMessage], int]:
    """The records of a spool file and where the last good one ends."""
    messages, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size : offset + HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        message = pb.AgentMessage()
        try:
            message.ParseFromString(payload)
        except Exception:
            break
        messages.append(message)
        offset += HEADER.size + length
    return messages, offset


def _versioned(sock: pb.Socket) -> bytes:
    comparable = pb.Socket()
    comparable.CopyFrom(sock)
    comparable.ClearField("rx_queue")
    comparable.ClearField("tx_queue")
    return comparable.SerializeToString(deterministic=True)
