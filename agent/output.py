"""Snapshots as rows: a table for people, JSON (one array) and CSV for programs.

Row fields and their names are the contract of DESIGN.md, shared with the
collector's SQL views.  The table and CSV show control characters in names,
paths and command lines written out (``\x1b``), so that a process named with
escape sequences cannot act on the terminal; JSON keeps them exact.

A socket held by several processes (a pre-fork server's listener) names its
lowest pid in ``pid``/``process``/``cmdline`` and counts every holder in ``owners``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import IO, Any

from sockfleet.agent.records import Proto, Snapshot, SocketRecord
from sockfleet.commandline import printable

FIELDS = (
    "host",
    "netns",
    "proto",
    "family",
    "type",
    "state",
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "path",
    "peer_inode",
    "inode",
    "uid",
    "user",
    "pid",
    "process",
    "cmdline",
    "owners",
    "rx_queue",
    "tx_queue",
)
FORMATS = ("table", "json", "csv")


def rows(snapshot: Snapshot, sockets: list[SocketRecord] | None = None) -> Iterator[tuple[Any, ...]]:
    """One tuple per socket, in ``FIELDS`` order (enum members are ``str``, so they print as their names)."""
    owners = snapshot.owners
    processes = snapshot.processes
    users = snapshot.users
    host = snapshot.host
    nobody = (None, None, None)
    details = {pid: (p.pid, p.name, p.cmdline) for pid, p in processes.items()}
    for r in snapshot.sockets if sockets is None else sockets:
        pids = owners.get(r.inode, ())
        pid, process, cmdline = details.get(pids[0], nobody) if pids else nobody
        uid = r.uid
        yield (
            host,
            r.netns,
            r.proto,
            r.family,
            r.type,
            r.state,
            r.local_address,
            r.local_port,
            r.remote_address,
            r.remote_port,
            r.path,
            r.peer_inode,
            r.inode or None,
            uid,
            users.get(uid) if uid is not None else None,
            pid,
            process,
            cmdline,
            len(pids),
            r.rx_queue,
            r.tx_queue,
        )


def write(snapshot: Snapshot, out: IO[str], fmt: str, sockets: list[SocketRecord] | None = None) -> None:
    if fmt == "json":
        write_json(rows(snapshot, sockets), out)
    elif fmt == "csv":
        import csv

        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows(_printable_rows(rows(snapshot, sockets)))
    else:
        write_table(snapshot, out, sockets)


# The fields that hold text of the host's users: paths, user names, process names and command lines.
TEXT_FIELDS = tuple(FIELDS.index(name) for name in ("path", "user", "process", "cmdline"))


def _printable_rows(table: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    for row in table:
        if not any(row[i] for i in TEXT_FIELDS):
            yield row
            continue
        cells = list(row)
        for i in TEXT_FIELDS:
            if cells[i]:
                cells[i] = printable(cells[i])
        yield tuple(cells)


def write_json(table: Iterator[tuple[Any, ...]], out: IO[str]) -> None:
    """One JSON array of objects, written in slices so a large host never needs one huge string."""
    import json

    encode = json.JSONEncoder(ensure_ascii=False).encode
    out.write("[")
    first = True
    batch: list[dict[str, Any]] = []
    for row in table:
        batch.append(dict(zip(FIELDS, row, strict=False)))
        if len(batch) == 2048:
            out.write(("" if first else ",") + encode(batch)[1:-1])
            first = False
            batch.clear()
    if batch:
        out.write(("" if first else ",") + encode(batch)[1:-1])
    out.write("]\n")


TABLE_HEADER = ("PROTO", "STATE", "RECV-Q", "SEND-Q", "LOCAL", "PEER", "USER", "PID", "PROCESS")


def _cells(snapshot: Snapshot, sockets: list[SocketRecord] | None) -> Iterator[tuple[str, ...]]:
    """The table's cells of each socket, straight from the records (the hot path of a one-shot snapshot)."""
    owners = snapshot.owners
    users = {uid: printable(name) if name else name for uid, name in snapshot.users.items()}
    names = {pid: (str(pid), printable(p.name)) for pid, p in snapshot.processes.items()}
    nobody = ("", "")
    for r in snapshot.sockets if sockets is None else sockets:
        if r.proto is Proto.UNIX:
            local = f"{printable(r.path) if r.path else '*'} {r.inode}"
            remote = f"* {r.peer_inode}" if r.peer_inode else "*"
            proto = "unix/" + r.type
        else:
            laddr, raddr = r.local_address or "", r.remote_address
            local = f"[{laddr}]:{r.local_port}" if ":" in laddr else f"{laddr}:{r.local_port}"
            if raddr is None:
                remote = "*"
            else:
                remote = f"[{raddr}]:{r.remote_port}" if ":" in raddr else f"{raddr}:{r.remote_port}"
            proto = r.proto
        pids = owners.get(r.inode)
        if pids:
            pid, owner = names.get(pids[0], nobody)
            if len(pids) > 1:
                owner = f"{owner} (+{len(pids) - 1})"
        else:
            pid, owner = nobody
        user = users.get(r.uid) if r.uid is not None else None
        yield (proto, r.state, str(r.rx_queue), str(r.tx_queue), local, remote, user or "", pid, owner)


def _widths(snapshot: Snapshot, sockets: list[SocketRecord] | tuple[SocketRecord, ...]) -> list[int]:
    """Column widths from the distinct values, without formatting every row.

    Endpoint widths are upper bounds (a port is counted as five digits), so a
    column may be a few characters wider than its widest cell, never narrower.
    """
    inet = [s for s in sockets if s.proto is not Proto.UNIX]
    unix = [s for s in sockets if s.proto is Proto.UNIX]
    addresses = {s.local_address for s in inet} | {s.remote_address for s in inet if s.remote_address}
    endpoint = max((len(a) + (8 if ":" in a else 6) for a in addresses if a), default=1)
    inode_digits = len(str(max((s.inode for s in unix), default=0)))
    paths = {s.path for s in unix}
    unix_local = max((len(p or "*") + 1 + inode_digits for p in paths), default=0)
    kinds = {("unix/" + s.type) if s.proto is Proto.UNIX else s.proto for s in sockets}
    queues = max((max(s.rx_queue, s.tx_queue) for s in sockets), default=0)
    users = [u for u in snapshot.users.values() if u] + [p.user for p in snapshot.processes.values() if p.user]
    pids = [len(str(pid)) for pid in snapshot.processes]
    cells = (
        max(map(len, kinds), default=0),
        max(map(len, {s.state for s in sockets}), default=0),
        len(str(queues)),
        len(str(queues)),
        max(endpoint, unix_local),
        max(endpoint, 2 + inode_digits),
        max(map(len, users), default=0),
        max(pids, default=0),
    )
    return [max(len(title), cell) for title, cell in zip(TABLE_HEADER, cells, strict=False)]


def write_table(snapshot: Snapshot, out: IO[str], sockets: list[SocketRecord] | None = None) -> None:
    """Columns like ``ss``: a Unix socket's LOCAL is its path and inode, its PEER the peer's inode.

    Lines are formatted and written in slices, so that a host with 200,000
    sockets never holds all its lines in memory at once.
    """
    template = "  ".join(f"%-{w}s" for w in _widths(snapshot, snapshot.sockets if sockets is None else sockets))
    template += "  %s\n"
    out.write(template % TABLE_HEADER)
    cells = _cells(snapshot, sockets)
    while chunk := list(islice(cells, 4096)):
        out.write("".join([template % line for line in chunk]))
