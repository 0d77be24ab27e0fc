"""Which processes hold each socket: inode → pids, from the links in ``/proc/PID/fd``.

Each descriptor of a socket is a link whose target reads ``socket:[INODE]``.
Reading a link costs about 5 µs, so a host with 100,000 sockets cannot afford
to read them all every scan.  ``OwnerIndex`` keeps, per process, the inode each
descriptor pointed to, and on the next scan reads again only:

* every descriptor of a process that is new (or whose pid was reused: the
  start time in ``/proc/PID/stat`` differs);
* descriptors whose number is new in the process's ``fd`` folder;
* descriptors that pointed to a socket that no longer exists (the number may
  have been reused).

A one-shot scan has no cache to start from; ``prefetch`` then walks the
processes' descriptors in a forked child while the caller reads the kernel's
socket tables, and the caller takes its share of the walk when it is done with
them, so a cold scan keeps two cores busy.  The walk is shared out in batches,
heaviest first, by descriptor counts, which ``stat`` of ``/proc/PID/fd``
reports as its size (Linux 6.2 and later; older kernels report 0, and batches
then count processes).  It is shared only on a host large enough for the fork
to cost less than it saves (``PREFETCH_LEAST``).

A socket that still has no owner after that may sit behind a reused number
that used to point to a file; then the non-socket descriptors are read again,
once, and inodes still unowned are remembered (kernel sockets, sockets of
processes we may not read) so that they do not trigger it again.
"""

from __future__ import annotations

import marshal
import os
import pwd
import struct
from array import array
from collections.abc import Collection, Iterable, Iterator

from sockfleet.agent.records import Process

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SOCKET = "socket:["
_TOKEN = struct.Struct("=I")  # a batch's number in the queue of a cold walk
_BATCHES = 1024  # batches of about equal weight; the queue (4 bytes each) fits a pipe's 64 KiB
# Descriptors from which a cold walk is shared with a child.  Measured on this project's 2-core machine,
# busy with other work: at 1,000 connections a snapshot took 99 ms in one process against 125 ms with the
# child (fastest of 9); at 3,000 and 10,000 the two were even; at 100,000 the child halved the time
# (4.2 s against 8.4 s), as two processes also get two shares of a busy machine.
PREFETCH_LEAST = 5000


def _two_cores() -> bool:
    """Whether this process may run on two cores at once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores >= 2


class _Holder:
    """What one process held at the last scan: its start time and each descriptor's socket inode (0: not a socket).

    A walk keeps them by descriptor name (``fds``).  A cold walk (the first scan, or a prefetching child)
    keeps them as two arrays instead, numbers and inodes (12 bytes a descriptor, against about 130 in
    a dict); they become a dict only if a later scan walks the process again.
    """

    __slots__ = ("_inodes", "_numbers", "fds", "start_time")

    def __init__(self, start_time: int, numbers: bytes = b"", inodes: bytes = b"") -> None:
        self.start_time = start_time
        self.fds: dict[str, int] = {}
        self._numbers = array("I", numbers) if numbers else None
        self._inodes = array("Q", inodes) if numbers else None

    def links(self) -> dict[str, int]:
        """Descriptor name → socket inode (0: not a socket)."""
        if self._numbers is not None and self._inodes is not None:
            self.fds = dict(zip(map(str, self._numbers), self._inodes, strict=True))
            self._numbers = self._inodes = None
        return self.fds

    def inodes(self) -> Iterable[int]:
        """The inode of each descriptor (0: not a socket)."""
        return self._inodes if self._inodes is not None else self.fds.values()

    def compact(self) -> None:
        """Keep the descriptors as two arrays until a later walk asks for them by name."""
        if self._numbers is None:
            self._numbers, self._inodes = array("I", map(int, self.fds)), array("Q", self.fds.values())
            self.fds = {}

    def sent(self) -> tuple[int, bytes, bytes]:
        """What a prefetching child sends of it: start time, descriptor numbers and inodes as arrays."""
        self.compact()
        numbers, inodes = self._numbers or array("I"), self._inodes or array("Q")
        return self.start_time, numbers.tobytes(), inodes.tobytes()

    def reread_files(self, base: str) -> tuple[int, list[int]]:
        """Read again the descriptors last seen pointing at something other than a socket: links read, and the
        sockets they name now."""
        read = 0
        found = []
        if self._numbers is not None and self._inodes is not None:
            inodes = self._inodes
            for i, number in enumerate(self._numbers):
                if not inodes[i]:
                    read += 1
                    inodes[i] = inode = _reread(f"{base}{number}")
                    if inode:
                        found.append(inode)
            return read, found
        for name, before in self.fds.items():
            if not before:
                read += 1
                self.fds[name] = inode = _reread(base + name)
                if inode:
                    found.append(inode)
        return read, found


def _reread(path: str) -> int:
    """The socket inode a descriptor's link now names; 0 for anything else, or a descriptor since closed."""
    try:
        target = os.readlink(path)
    except OSError:
        return 0  # closed since, or the process exited
    return int(target[8:-1]) if target.startswith(_SOCKET) else 0


def parse_stat(text: str) -> tuple[str, int]:
    """``/proc/PID/stat`` → (name, start time in clock ticks).

    ``"42 (my (odd) name) S 1 ... 21 fields ..."``: the name is between the first
    ``(`` and the last ``)``; the start time is field 22 (``man 5 proc``).
    """
    head, _, tail = text.rpartition(")")
    name = head.partition("(")[2]
    fields = tail.split()
    return name, int(fields[19])


class OwnerIndex:
    """Socket inode → owning pids, refreshed cheaply between scans."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._holders: dict[int, _Holder] = {}
        self._unowned: set[int] = set()
        self._processes: dict[tuple[int, int], Process] = {}
        self._users: dict[int, str | None] = {}
        self.unreadable: list[int] = []
        self.links_read = 0
        self._pending: tuple[int, int, int] | None = None  # the child, its result's pipe, the queue
        self._deferred: list[list[int]] = []  # batches of pids to walk, by number

    def _batches(self) -> tuple[list[list[int]], int]:
        """Every pid, in batches of about equal weight, heaviest first (descriptor counts: see the module),
        and the descriptors counted.  A process is never split: a batch is one large process or several small ones.
        """
        weighed = []
        for entry in os.listdir(self.proc_root):
            if entry.isdigit():
                try:
                    size = os.stat(f"{self.proc_root}/{entry}/fd").st_size
                except OSError:
                    size = 0  # not ours to read, or gone: the walk will say which
                weighed.append((size + 1, int(entry)))
        weighed.sort(reverse=True)
        least = sum(size for size, _ in weighed) // _BATCHES + 1
        batches: list[list[int]] = []
        load = least
        for size, pid in weighed:
            if load >= least:
                batches.append([])
                load = 0
            batches[-1].append(pid)
            load += size
        return batches, sum(size for size, _ in weighed)

    def prefetch(self, least: int = PREFETCH_LEAST) -> None:
        """Start reading every descriptor link in a child process, when that pays; ``refresh`` collects the result.

        It pays when the host holds at least ``least`` descriptors and this process may use two cores:
        below that, forking and sending the result back cost more than the walk the child would take
        off this process.  ``least=0`` shares the walk whatever the host.

        The work is a queue both share: a pipe holding the number of each batch of pids, heaviest
        first.  The child takes batches from it at once; the caller takes what is left when it calls
        ``refresh``, after reading the sockets.  So the two split the walk by how long each actually
        takes on this host, without guessing: a caller with many sockets to parse leaves the whole
        walk to the child, one with few takes a share of it.

        Only for a process that has no other threads (a fork copies just the calling thread); the
        one-shot ``agent snapshot`` is such a process.
        """
        if self._holders or self._pending is not None or (least and not _two_cores()):
            return
        self._deferred, descriptors = self._batches()
        if descriptors < least:
            return
        queue_end, feed = os.pipe()
        os.write(feed, b"".join(_TOKEN.pack(number) for number in range(len(self._deferred))))
        os.close(feed)  # the queue is full: a read of an empty queue is its end
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
            status = 1
            try:
                os.close(read_end)
                holders = self._walk_pids(self._queued(queue_end), frozenset())
                data = marshal.dumps(({pid: h.sent() for pid, h in holders.items()}, self.unreadable))
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(data)
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._pending = (child, read_end, queue_end)

    def _queued(self, queue: int) -> Iterator[int]:
        """The pids of each batch taken from the shared queue until it is empty (a 4-byte read is atomic)."""
        while token := os.read(queue, _TOKEN.size):
            yield from self._deferred[_TOKEN.unpack(token)[0]]

    def _collect_prefetch(self, alive: Collection[int]) -> dict[int, _Holder] | None:
        assert self._pending is not None
        child, read_end, queue_end = self._pending
        self._pending = None
        self.unreadable = []
        try:
            mine = self._walk_pids(self._queued(queue_end), alive, compact=True)
        finally:
            os.close(queue_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(child, 0)
        if status != 0 or not data:
            return None  # the child failed: walk here instead
        walked, unreadable = marshal.loads(data)  # noqa: S302 - written by our own child
        for pid, (start_time, numbers, inodes) in walked.items():
            mine[pid] = _Holder(start_time, numbers, inodes)
            self.links_read += len(numbers) // 4
        self.unreadable.extend(unreadable)
        return mine

    def _walk_pids(self, pids: Iterable[int], alive: Collection[int], compact: bool = False) -> dict[int, _Holder]:
        """Walk each of ``pids``; ``compact``: keep what a cold walk read as arrays (see ``_Holder``), so that a
        one-shot scan of a large host never holds a dict entry per descriptor."""
        holders: dict[int, _Holder] = {}
        for pid in pids:
            holder = self._walk(pid, alive)
            if holder is not None:
                if compact:
                    holder.compact()
                holders[pid] = holder
        return holders

    def refresh(self, inodes: Collection[int]) -> dict[int, tuple[int, ...]]:
        """Owners of the sockets in ``inodes`` (pids sorted, lowest first)."""
        alive = inodes if isinstance(inodes, (set, frozenset)) else set(inodes)
        holders = self._collect_prefetch(alive) if self._pending is not None else None
        if holders is None:
            self.unreadable = []
            pids = [int(entry) for entry in os.listdir(self.proc_root) if entry.isdigit()]
            holders = self._walk_pids(pids, alive, compact=not self._holders)
        self._holders = holders
        owners = self._invert(alive)
        unowned = self._unowned
        missing = [inode for inode in alive if inode and inode not in owners and inode not in unowned]
        if missing:
            # Add the holders found on a second look to what the first found, rather than inverting again:
            # on a large host a second index of every socket would double the scan's peak memory.
            for pid in sorted(holders):
                for inode in self._reread_files(pid, holders[pid]):
                    held = owners.get(inode, ())
                    if inode in alive and pid not in held:
                        owners[inode] = tuple(sorted((*held, pid)))
        self._unowned = {inode for inode in alive if inode and inode not in owners}
        return owners

    def _walk(self, pid: int, alive: Collection[int]) -> _Holder | None:
        base = f"{self.proc_root}/{pid}"
        try:
            with open(f"{base}/stat", encoding="utf-8", errors="replace") as stat:
                start_time = parse_stat(stat.read())[1]
            dirfd = os.open(f"{base}/fd", _DIR_FLAGS)
        except PermissionError:
            self.unreadable.append(pid)
            return None
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            return None  # exited while we looked, or a zombie
        try:
            names = os.listdir(dirfd)
            holder = self._holders.get(pid)
            if holder is None or holder.start_time != start_time:
                holder = _Holder(start_time)
            previous = holder.links()
            fds: dict[str, int] = {}
            readlink = os.readlink
            for name in names:
                inode = previous.get(name)
                if inode is None or (inode and inode not in alive):
                    try:
                        target = readlink(name, dir_fd=dirfd)
                    except OSError:
                        continue  # closed between listdir and readlink
                    self.links_read += 1
                    inode = int(target[8:-1]) if target.startswith(_SOCKET) else 0
                fds[name] = inode
            holder.fds = fds
            return holder
        except PermissionError:
            self.unreadable.append(pid)
            return None
        except OSError:
            return None  # the process exited while we read its descriptors
        finally:
            os.close(dirfd)

    def _reread_files(self, pid: int, holder: _Holder) -> list[int]:
        """Read again the descriptors last seen pointing at something other than a socket; the sockets found."""
        read, found = holder.reread_files(f"{self.proc_root}/{pid}/fd/")
        self.links_read += read
        return found

    def _invert(self, alive: Collection[int]) -> dict[int, tuple[int, ...]]:
        owners: dict[int, tuple[int, ...]] = {}
        get = owners.get
        for pid in sorted(self._holders):
            alone = (pid,)  # shared by every socket this process alone holds: one tuple, not thousands
            for inode in self._holders[pid].inodes():
                if inode and inode in alive:
                    held = get(inode)
                    if held is None:
                        owners[inode] = alone
                    elif held[-1] != pid:  # a process may hold one socket under several descriptors
                        owners[inode] = (*held, pid)
        return owners

    def process(self, pid: int) -> Process | None:
        """Name, command line, user and start time of ``pid`` (cached while the pid lives)."""
        holder = self._holders.get(pid)
        start_time = holder.start_time if holder is not None else -1
        key = (pid, start_time)
        cached = self._processes.get(key)
        if cached is not None:
            return cached
        base = f"{self.proc_root}/{pid}"
        try:
            with open(f"{base}/stat", encoding="utf-8", errors="replace") as stat:
                name, start_time = parse_stat(stat.read())
            with open(f"{base}/cmdline", "rb") as cmdline:
                args = cmdline.read()
            uid: int | None = os.stat(base).st_uid
        except (OSError, IndexError, ValueError):
            return None  # exited since the scan
        command = args.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")
        process = Process(pid, name, command, uid, self.user(uid), start_time)
        if len(self._processes) > 4 * len(self._holders) + 64:
            self._processes = {k: v for k, v in self._processes.items() if k[0] in self._holders}
        self._processes[(pid, start_time)] = process
        return process

    def user(self, uid: int | None) -> str | None:
        """The user name of ``uid``, or ``None`` when the system has no name for it."""
        if uid is None:
            return None
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]
