"""One scan of the host: every namespace, the first source that works in each, owners and coverage."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence

from sockfleet.agent import netns
from sockfleet.agent.errors import SourceError
from sockfleet.agent.owners import OwnerIndex
from sockfleet.agent.records import Coverage, Namespace, Process, Proto, Snapshot, SourceStatus
from sockfleet.agent.sources import SOURCES, Source
from sockfleet.agent.table import Sockets, SocketTable
from sockfleet.v1.limits import MAX_ADDRESSES


def _warn(message: str, *args: object) -> None:
    """Log a warning; ``logging`` is loaded only then, as a one-shot snapshot never logs."""
    import logging

    logging.getLogger("sockfleet.agent").warning(message, *args)


ALL_PROTOS = frozenset(Proto)


def default_sources() -> tuple[Source, ...]:
    """Linux: netlink, then /proc; elsewhere psutil alone."""
    if sys.platform.startswith("linux"):
        return SOURCES
    return tuple(source for source in SOURCES if source.NAME == "psutil")


def namespaces(scope: str, proc_root: str = "/proc") -> tuple[list[Namespace], list[int]]:
    """The namespaces to scan (``all`` or ``current``) and the pids whose namespace is unreadable."""
    if scope == "current" or not sys.platform.startswith("linux"):
        return [netns.current_namespace(proc_root)], []
    return netns.discover(proc_root)


def scan_namespace(
    ns: Namespace, sources: Sequence[Source], protos: frozenset[Proto], proc_root: str
) -> tuple[SocketTable | None, list[SourceStatus]]:
    """Try ``sources`` in order in one namespace; the first that works gives the records, as a table."""
    statuses = []
    for source in sources:
        started = time.perf_counter()
        try:
            records = source.collect(ns, protos, proc_root)
        except SourceError as exc:
            statuses.append(SourceStatus(source.NAME, ns.inode, False, time.perf_counter() - started, 0, str(exc)))
            continue
        statuses.append(SourceStatus(source.NAME, ns.inode, True, time.perf_counter() - started, len(records)))
        return records if isinstance(records, SocketTable) else SocketTable.of(ns.inode, records), statuses
    return None, statuses


class Scanner:
    """Takes snapshots of this host; keeps the owner index warm between them.

    ``prefetch_owners`` walks the descriptors of a cold scan in a forked child,
    in parallel with the socket sources: for a single-threaded one-shot process.
    """

    def __init__(
        self,
        host: str | None = None,
        scope: str = "all",
        protos: frozenset[Proto] = ALL_PROTOS,
        sources: Sequence[Source] | None = None,
        proc_root: str = "/proc",
        prefetch_owners: bool = False,
        with_addresses: bool = False,
    ) -> None:
        self.host = host or socket.gethostname()
        self.scope = scope
        self.protos = protos
        self.sources = tuple(sources) if sources is not None else default_sources()
        self.proc_root = proc_root
        self.owners = OwnerIndex(proc_root)
        self.prefetch_owners = prefetch_owners
        self.with_addresses = with_addresses
        self.address_errors: set[str] = set()  # each failing namespace's error, logged once
        self.spaces: list[Namespace] = []  # the namespaces the last scan read

    def snapshot(self) -> Snapshot:
        if self.prefetch_owners:
            self.owners.prefetch()
        spaces, ns_unreadable = namespaces(self.scope, self.proc_root)
        tables: list[SocketTable] = []
        statuses: list[SourceStatus] = []
        scanned: list[int] = []
        unscanned: list[tuple[str, str]] = []
        for ns in spaces:
            table, tried = scan_namespace(ns, self.sources, self.protos, self.proc_root)
            statuses.extend(tried)
            if table is None:
                reasons = "; ".join(status.error or "" for status in tried) or "no source available"
                unscanned.append((str(ns.inode), reasons))
                continue
            scanned.append(ns.inode)
            tables.append(table)
        sockets = Sockets(tables)
        # The scan's time is when the kernel's tables were last read: a socket they hold was open then, and
        # one they no longer hold had closed by then, so no change is ever dated before it happened.
        taken_at = time.time()
        owners = self.owners.refresh(sockets.inodes())
        processes: dict[int, Process] = {}
        for pids in owners.values():
            for pid in pids:
                if pid not in processes:
                    process = self.owners.process(pid)
                    if process is not None:
                        processes[pid] = process
        users = {uid: self.owners.user(uid) for uid in sockets.uids()}
        unreadable = sorted(set(self.owners.unreadable) | set(ns_unreadable))
        coverage = Coverage(tuple(statuses), tuple(scanned), tuple(unscanned), tuple(unreadable))
        self.spaces = [ns for ns in spaces if ns.inode in scanned]
        found = self._addresses(self.spaces) if self.with_addresses else None
        return Snapshot(self.host, taken_at, sockets, owners, processes, users, coverage, found)

    def _addresses(self, spaces: list[Namespace]) -> tuple[tuple[int, str, str], ...]:
        """Every interface address of ``spaces``, sorted; a namespace whose addresses cannot be read is logged."""
        from sockfleet.agent import addresses  # a running agent's: a one-shot snapshot does not ask

        found: set[tuple[int, str, str]] = set()
        for ns in spaces:
            try:
                pairs = addresses.collect(ns)
            except SourceError as exc:
                if str(exc) not in self.address_errors:
                    self.address_errors.add(str(exc))
                    _warn("%s", exc)
                continue
            found.update((ns.inode, name, address) for name, address in pairs)
        if len(found) > MAX_ADDRESSES:
            if "too many" not in self.address_errors:
                self.address_errors.add("too many")
                _warn("%d interface addresses: only the first %d are reported", len(found), MAX_ADDRESSES)
            return tuple(sorted(found)[:MAX_ADDRESSES])
        return tuple(sorted(found))
