"""The spool on disk: a base snapshot and the waiting scans in small segment files.

Files in the spool's folder (mode 0700)::

    base.snap       one record: a Snapshot of what the collector holds; its ``seq`` is the number of the
                    last scan folded into it.  Replaced whole (write, fsync, rename).
    acked           12 bytes, u64 number | u32 crc32: the last scan the collector acknowledged.
                    Rewritten in place, so an acknowledgement never needs free space.
    unsaved         empty; made when scans waited but not even the base could be written (a full
                    disk): its time tells a restarted agent since when scans may be lost.
    host            the id of the host whose scans wait here.
    lock            held (flock) by the one agent that uses the folder.
    NNN.seg         the waiting scans, in order, as Delta records whose ``seq`` is the scan's number;
                    each segment holds about ``SEGMENT_BYTES``.

Every record is framed ``u32 length | u32 crc32 | AgentMessage bytes``.  Loading reads
``base.snap``, folds into it the scans up to ``acked`` and keeps the rest waiting.  A record torn by a
kill (a short or bad frame) is cut off by truncating its file, which needs no free space either, so
the agent starts on a full disk.

Nothing here rewrites the whole spool: appending a scan writes one record; composing two old scans
(the spool is over its bound) rewrites the one or two segments that hold them, and if even that does
not fit, the segments are cut before the older scan, to be written again when space returns.  Every
write either completes or raises ``OSError``; the caller (``agent.spool``) keeps what did not fit in
memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from sockfleet.v1 import fleet_pb2 as pb

log = logging.getLogger("sockfleet.agent")
HEADER = struct.Struct("<II")
ACKED = struct.Struct("<QI")
SEGMENT_BYTES = 1 << 20
BASE, ACKED_FILE, UNSAVED, OWNER, LOCK, SUFFIX = "base.snap", "acked", "unsaved", "host", "lock", ".seg"
_HELD: dict[str, list[int]] = {}  # spool folders this process holds: [lock descriptor, how many spools use it]


def own(name: str) -> bool:
    """Whether a file of this name in a spool folder is the spool's: ``3.seg``, ``base.snap``, ``.acked.tmp``,
    or the files of an earlier layout (``spool.log``, ``spool.head``)."""
    fixed = (BASE, ACKED_FILE, UNSAVED, OWNER, LOCK, "spool.log", "spool.head")
    plain = name[1:-4] if name.startswith(".") and name.endswith(".tmp") else name
    return plain in fixed or (plain.endswith(SUFFIX) and plain[: -len(SUFFIX)].isdigit())


def frame(message: pb.AgentMessage) -> bytes:
    payload = message.SerializeToString()
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes) -> tuple[list[tuple[pb.AgentMessage, int, int]], int]:
    """The records of a file, each with its offset and length, and where the last good one ends."""
    records, offset = [], 0
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
        records.append((message, offset, HEADER.size + length))
        offset += HEADER.size + length
    return records, offset


@dataclass
class Loaded:
    """What a spool folder held: the base, the number acknowledged, and the records after the base."""

    base: pb.Snapshot
    acked: int
    records: list[pb.Delta] = field(default_factory=list)


class Segments:
    """The files of one spool folder.  Records are known by number (their ``seq``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index: dict[int, tuple[int, int, int]] = {}  # record number -> (segment, offset, length)
        self.sizes: dict[int, int] = {}  # segment -> bytes
        self.current = 0  # the segment appended to
        self.base_number = 0  # number of the last scan folded into base.snap
        self.last = 0  # number of the last record on disk

    def _path(self, segment: int) -> Path:
        return self.folder / f"{segment:012d}{SUFFIX}"

    def exists(self) -> bool:
        return (self.folder / BASE).exists()

    # Loading.

    def load(self) -> Loaded | None:
        """The spool left by an earlier run, or None when there is none."""
        path = self.folder / BASE
        if not path.exists():
            return None
        records, _ = unframe(path.read_bytes())
        if not records or not records[0][0].HasField("snapshot"):
            log.warning("spool: %s is not a snapshot; the spool is set aside as %s.bad", path, path.name)
            os.replace(path, path.with_name(path.name + ".bad"))
            return None
        loaded = Loaded(records[0][0].snapshot, self._read_acked())
        self.base_number = self.last = loaded.base.seq
        segments = sorted(
            int(p.name[: -len(SUFFIX)]) for p in self.folder.glob(f"*{SUFFIX}") if p.name[: -len(SUFFIX)].isdigit()
        )
        for position, segment in enumerate(segments):
            data = self._path(segment).read_bytes()
            found, good = unframe(data)
            for message, offset, length in found:
                delta = message.delta
                if delta.seq <= self.last:
                    continue  # already in the base
                loaded.records.append(delta)
                self.index[delta.seq] = (segment, offset, length)
                self.last = delta.seq
            self.sizes[segment] = good
            if good < len(data):
                log.warning("spool: cut off a torn record at byte %d of %s", good, self._path(segment).name)
                os.truncate(self._path(segment), good)
                for later in segments[position + 1 :]:
                    self._path(later).unlink(missing_ok=True)
                break
        self.current = (segments[-1] if segments else 0) + 1
        return loaded

    def _read_acked(self) -> int:
        try:
            data = (self.folder / ACKED_FILE).read_bytes()
            number, crc = ACKED.unpack(data[: ACKED.size])
        except (OSError, struct.error):
            return 0
        return number if zlib.crc32(struct.pack("<Q", number)) == crc else 0

    # Writing.

    def write_base(self, base: pb.Snapshot) -> None:
        """Replace the base (write, fsync, rename); segments wholly folded into it are removed."""
        self._atomic(BASE, frame(pb.AgentMessage(snapshot=base)))
        (self.folder / UNSAVED).unlink(missing_ok=True)
        self.base_number = base.seq
        self.last = max(self.last, base.seq)
        self.set_acked(base.seq)
        for segment in sorted(self.sizes):
            numbers = [n for n, where in self.index.items() if where[0] == segment]
            if numbers and max(numbers) > base.seq:
                break
            self._remove(segment)

    def set_acked(self, number: int) -> None:
        """Overwrite the acknowledged number in place: no new block, so it works on a full disk."""
        data = ACKED.pack(number, zlib.crc32(struct.pack("<Q", number)))
        fd = os.open(self.folder / ACKED_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, record: pb.Delta) -> None:
        """Write one record after the last (``record.seq`` numbers it)."""
        data = frame(pb.AgentMessage(delta=record))
        if self.sizes.get(self.current, 0) >= SEGMENT_BYTES:
            self.current += 1
        segment = self.current
        offset = self.sizes.get(segment, 0)
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "short write")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, offset)  # no half record left behind
            raise
        finally:
            os.close(fd)
        self.sizes[segment] = offset + len(data)
        self.index[record.seq] = (segment, offset, len(data))
        self.last = record.seq

    def replace(self, dropped: int, merged: pb.Delta) -> None:
        """After composing scan ``dropped`` with the next one into ``merged``: drop the first, and write
        ``merged`` in place of the second.  When that does not fit, cut the segments before ``dropped``."""
        if dropped not in self.index:
            return  # not on disk: nothing there to fix
        touched = sorted({self.index[dropped][0], *([self.index[merged.seq][0]] if merged.seq in self.index else [])})
        try:
            for segment in touched:
                self._rewrite(segment, dropped, merged)
        except OSError as exc:
            # Half rewritten, the records on disk no longer follow one another: cut them where they stop.
            log.warning(
                "spool: no room to rewrite a segment (%s); the scans from %d on wait in memory", exc.strerror, dropped
            )
            self.cut(dropped)

    def _rewrite(self, segment: int, dropped: int, merged: pb.Delta) -> None:
        path = self._path(segment)
        found, _ = unframe(path.read_bytes())
        chunks, index = [], {}
        offset = 0
        for message, _, _ in found:
            number = message.delta.seq
            if number == dropped:
                continue
            data = frame(pb.AgentMessage(delta=merged)) if number == merged.seq else frame(message)
            chunks.append(data)
            index[number] = (segment, offset, len(data))
            offset += len(data)
        if not chunks:
            self._remove(segment)
        else:
            self._atomic(path.name, b"".join(chunks))
            self.sizes[segment] = offset
        for number in [n for n, where in self.index.items() if where[0] == segment]:
            del self.index[number]
        self.index.update(index)

    def cut(self, number: int) -> None:
        """Remove record ``number`` (or the first after it still on disk) and every later one, by truncating:
        no space needed."""
        kept = [n for n in self.index if n >= number]
        if not kept:
            return
        segment, offset, _ = self.index[min(kept)]
        os.truncate(self._path(segment), offset)
        self.sizes[segment] = offset
        for following in [s for s in self.sizes if s > segment]:
            self._remove(following)
        for n in [n for n in self.index if n >= number]:
            del self.index[n]
        self.last = max(self.index, default=self.base_number)
        self.current = segment

    def lock(self) -> int | None:
        """Take the folder for this process (until ``unlock``); None when another process holds it."""
        held = _HELD.get(os.path.realpath(self.folder))
        if held is not None:
            held[1] += 1  # this process holds it already
            return held[0]
        try:
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning(
                "spool: cannot make %s (%s); nothing keeps another agent off this folder",
                self.folder / LOCK,
                exc.strerror,
            )
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        _HELD[os.path.realpath(self.folder)] = [fd, 1]
        return fd

    def unlock(self) -> None:
        held = _HELD.get(os.path.realpath(self.folder))
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                os.close(held[0])
                del _HELD[os.path.realpath(self.folder)]

    def owner(self) -> str | None:
        """The host whose scans wait here, when the folder says."""
        try:
            return (self.folder / OWNER).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def set_owner(self, host: str) -> None:
        with contextlib.suppress(OSError):  # best effort: a full disk must not stop the spool
            self._atomic(OWNER, host.encode())

    def mark_unsaved(self) -> None:
        """Leave a sign that scans waited with nothing on disk (an empty file needs no free block)."""
        with contextlib.suppress(OSError):  # there already, or not even that fits
            os.close(os.open(self.folder / UNSAVED, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    def unsaved_since(self) -> float | None:
        """When scans began to wait with nothing on disk (seconds since the epoch), if they did."""
        try:
            return (self.folder / UNSAVED).stat().st_mtime
        except OSError:
            return None

    def clear(self) -> None:
        for path in self.folder.iterdir():
            if path.name != LOCK and own(path.name):
                path.unlink(missing_ok=True)
        self.index.clear()
        self.sizes.clear()
        self.current = 0
        self.base_number = 0
        self.last = 0

    def _remove(self, segment: int) -> None:
        self._path(segment).unlink(missing_ok=True)
        self.sizes.pop(segment, None)
        for number in [n for n, where in self.index.items() if where[0] == segment]:
            del self.index[number]

    def _atomic(self, name: str, data: bytes) -> None:
        temporary = self.folder / f".{name}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.folder / name)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
