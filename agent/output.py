"""Snapshots as rows: a table for people, JSON (one array) and CSV for programs.

Row fields and their names are the contract of DESIGN.md, shared with the
collector's SQL views.  A socket held by several processes (a pre-fork server's
listener) names its lowest pid in ``pid``/``process``/``cmdline`` and counts
every holder in ``owners``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import IO, Any

from agent.records import Proto, Snapshot, SocketRecord

FIELDS = (
    "host", "netns", "proto", "family", "type", "state",
    "local_address", "local_port", "remote_address", "remote_port", "path", "peer_inode",
    "inode", "uid", "user", "pid", "process", "cmdline", "owners", "rx_queue", "tx_queue",
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
        yield (host, r.netns, r.proto, r.family, r.type, r.state,
               r.local_address, r.local_port, r.remote_address, r.remote_port, r.path, r.peer_inode,
               r.inode or None, uid, users.get(uid) if uid is not None else None, pid, process, cmdline,
               len(pids), r.rx_queue, r.tx_queue)


def write(snapshot: Snapshot, out: IO[str], fmt: str, sockets: list[SocketRecord] | None = None) -> None:
    if fmt == "json":
        write_json(rows(snapshot, sockets), out)
    elif fmt == "csv":
        import csv

        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows(rows(snapshot, sockets))
    else:
        write_table(snapshot, out, sockets)


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
    for row in rows(snapshot, sockets):
        (_, _, proto, _, kind, state, laddr, lport, raddr, rport, path, peer, inode,
         _, user, pid, process, _, owners, rxq, txq) = row
        if proto is Proto.UNIX:
            local = f"{path or '*'} {inode}"
            remote = f"* {peer}" if peer else "*"
            proto = "unix/" + kind
        else:
            local = f"[{laddr}]:{lport}" if ":" in laddr else f"{laddr}:{lport}"
            remote = "*" if raddr is None else f"[{raddr}]:{rport}" if ":" in raddr else f"{raddr}:{rport}"
        owner = process or ""
        if owners > 1:
            owner = f"{owner} (+{owners - 1})"
        yield (proto, state, str(rxq), str(txq), local, remote, user or "", str(pid or ""), owner)


def write_table(snapshot: Snapshot, out: IO[str], sockets: list[SocketRecord] | None = None) -> None:
    """Columns like ``ss``: a Unix socket's LOCAL is its path and inode, its PEER the peer's inode.

    Two passes over the sockets, one for the column widths and one to print, so that a
    host with 200,000 sockets never holds all its lines in memory at once.
    """
    widths = [len(title) for title in TABLE_HEADER[:-1]]
    cells = _cells(snapshot, sockets)
    while chunk := list(islice(cells, 4096)):
        for index, column in enumerate(list(zip(*chunk, strict=True))[:-1]):
            widths[index] = max(widths[index], *map(len, column))
    template = "  ".join(f"%-{w}s" for w in widths) + "  %s\n"
    out.write(template % TABLE_HEADER)
    cells = _cells(snapshot, sockets)
    while chunk := list(islice(cells, 4096)):
        out.write("".join([template % line for line in chunk]))
