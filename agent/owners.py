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

A one-shot scan has no cache to start from; ``prefetch`` then walks most
processes' descriptors in a forked child while the caller reads the kernel's
socket tables, and the caller walks the rest afterwards, so a cold scan keeps
two cores busy.  The split is balanced by descriptor counts, which ``stat`` of
``/proc/PID/fd`` reports as its size (Linux 6.2 and later; older kernels
report 0, and the split falls back to counting processes).

A socket that still has no owner after that may sit behind a reused number
that used to point to a file; then the non-socket descriptors are read again,
once, and inodes still unowned are remembered (kernel sockets, sockets of
processes we may not read) so that they do not trigger it again.
"""

from __future__ import annotations

import marshal
import os
import pwd
from collections.abc import Collection

from sockfleet.agent.records import Process

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SOCKET = "socket:["


class _Holder:
    """What one process held at the last scan: its start time and each descriptor's socket inode (0: not a socket)."""

    __slots__ = ("fds", "start_time")

    def __init__(self, start_time: int) -> None:
        self.start_time = start_time
        self.fds: dict[str, int] = {}


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
        self._pending: tuple[int, int] | None = None
        self._deferred: list[int] = []

    def _split(self, share: float) -> tuple[list[int], list[int]]:
        """Pids for the child (about ``share`` of all descriptors) and for the caller."""
        weighed = []
        for entry in os.listdir(self.proc_root):
            if entry.isdigit():
                try:
                    size = os.stat(f"{self.proc_root}/{entry}/fd").st_size
                except OSError:
                    size = 0  # not ours to read, or gone: the walk will say which
                weighed.append((size + 1, int(entry)))
        weighed.sort(reverse=True)
        total = sum(size for size, _ in weighed)
        child: list[int] = []
        caller: list[int] = []
        child_load = caller_load = 0
        for size, pid in weighed:
            if child_load * (1 - share) <= caller_load * share:
                child.append(pid)
                child_load += size
            else:
                caller.append(pid)
                caller_load += size
        assert child_load + caller_load == total
        return child, caller

    def prefetch(self, share: float = 0.7) -> None:
        """Start reading every descriptor link in a child process; ``refresh`` collects the result.

        Only for a process that has no other threads (a fork copies just the
        calling thread); the one-shot ``agent snapshot`` is such a process.
        """
        if self._holders or self._pending is not None:
            return
        mine, self._deferred = self._split(share)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
            status = 1
            try:
                os.close(read_end)
                holders = self._walk_pids(mine, frozenset())
                data = marshal.dumps(({pid: (h.start_time, h.fds) for pid, h in holders.items()}, self.unreadable))
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(data)
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._pending = (child, read_end)

    def _collect_prefetch(self, alive: Collection[int]) -> dict[int, _Holder] | None:
        assert self._pending is not None
        child, read_end = self._pending
        self._pending = None
        self.unreadable = []
        mine = self._walk_pids(self._deferred, alive)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(child, 0)
        if status != 0 or not data:
            return None  # the child failed: walk here instead
        walked, unreadable = marshal.loads(data)  # noqa: S302 - written by our own child
        for pid, (start_time, fds) in walked.items():
            holder = mine[pid] = _Holder(start_time)
            holder.fds = fds
            self.links_read += len(fds)
        self.unreadable.extend(unreadable)
        return mine

    def _walk_pids(self, pids: Collection[int], alive: Collection[int]) -> dict[int, _Holder]:
        holders: dict[int, _Holder] = {}
        for pid in pids:
            holder = self._walk(pid, alive)
            if holder is not None:
                holders[pid] = holder
        return holders

    def refresh(self, inodes: Collection[int]) -> dict[int, tuple[int, ...]]:
        """Owners of the sockets in ``inodes`` (pids sorted, lowest first)."""
        alive = inodes if isinstance(inodes, (set, frozenset)) else set(inodes)
        holders = self._collect_prefetch(alive) if self._pending is not None else None
        if holders is None:
            self.unreadable = []
            pids = [int(entry) for entry in os.listdir(self.proc_root) if entry.isdigit()]
            holders = self._walk_pids(pids, alive)
        self._holders = holders
        owners = self._invert(alive)
        unowned = self._unowned
        missing = [inode for inode in alive if inode and inode not in owners and inode not in unowned]
        if missing:
            for pid, holder in holders.items():
                self._reread_files(pid, holder)
            owners = self._invert(alive)
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
            previous = holder.fds
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

    def _reread_files(self, pid: int, holder: _Holder) -> None:
        """Read again the descriptors last seen pointing at something other than a socket."""
        base = f"{self.proc_root}/{pid}/fd/"
        for name, inode in holder.fds.items():
            if inode == 0:
                try:
                    target = os.readlink(base + name)
                except OSError:
                    continue  # closed since, or the process exited
                self.links_read += 1
                if target.startswith(_SOCKET):
                    holder.fds[name] = int(target[8:-1])

    def _invert(self, alive: Collection[int]) -> dict[int, tuple[int, ...]]:
        owners: dict[int, tuple[int, ...]] = {}
        get = owners.get
        for pid in sorted(self._holders):
            alone = (pid,)  # shared by every socket this process alone holds: one tuple, not thousands
            for inode in self._holders[pid].fds.values():
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
