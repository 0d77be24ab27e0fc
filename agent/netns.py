"""Network namespaces: find every one on the host, and step into one briefly.

A netlink socket belongs to the namespace of the thread that created it, so
scanning another namespace means: ``setns`` into it, create the socket, and
``setns`` back.  The socket keeps working in its namespace afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from sockfleet.agent.records import Namespace

CLONE_NEWNET = 0x40000000


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def current_namespace(proc_root: str = "/proc") -> Namespace:
    path = f"{proc_root}/self/ns/net"
    pid = int(os.readlink(f"{proc_root}/self"))  # our pid as this /proc numbers it
    return Namespace(inode=_ns_inode(path), path=path, pid=pid, current=True)


def discover(proc_root: str = "/proc", run_netns: str = "/run/netns") -> tuple[list[Namespace], list[int]]:
    """Every network namespace reachable from ``/proc/*/ns/net`` and ``/run/netns/*``.

    Returns the namespaces (the current one first) and the pids whose namespace
    could not be read (processes of other users when not root).
    """
    current = current_namespace(proc_root)
    found: dict[int, Namespace] = {current.inode: current}
    unreadable: list[int] = []
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        path = f"{proc_root}/{entry}/ns/net"
        try:
            inode = _ns_inode(path)
        except PermissionError:
            unreadable.append(int(entry))
            continue
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited while we walked /proc
        if inode not in found:
            found[inode] = Namespace(inode=inode, path=path, pid=int(entry), current=False)
    names = _named(run_netns)
    for name, (inode, path) in names.items():
        if inode not in found:
            found[inode] = Namespace(inode=inode, path=path, pid=None, current=False, name=name)
        elif found[inode].name is None:
            ns = found[inode]
            found[inode] = Namespace(ns.inode, ns.path, ns.pid, ns.current, name)
    return list(found.values()), sorted(unreadable)


def _named(run_netns: str) -> dict[str, tuple[int, str]]:
    """Namespaces kept by ``ip netns add`` as bind mounts under ``/run/netns``."""
    try:
        entries = os.listdir(run_netns)
    except OSError:
        return {}
    named: dict[str, tuple[int, str]] = {}
    for name in sorted(entries):
        path = f"{run_netns}/{name}"
        try:
            named[name] = (_ns_inode(path), path)
        except OSError:
            continue  # removed while we listed the folder, or not a namespace
    return named


_libc: Any = None


def _setns(fd: int) -> None:
    """``setns(2)`` through libc: Python gains ``os.setns`` only in 3.12."""
    global _libc  # noqa: PLW0603 - libc is loaded once, on first use
    import ctypes  # only a scan of other namespaces pays for it
    import ctypes.util

    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(ns: Namespace) -> Iterator[None]:
    """Run the body inside ``ns`` (needs CAP_SYS_ADMIN), then return to this thread's namespace."""
    if ns.current:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
