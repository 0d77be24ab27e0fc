"""Snapshots as rows: a table for people, JSON (one array) and CSV for programs.

Row fields and their names are the contract of DESIGN.md, shared with the
collector's SQL views.  The table and CSV show control characters in names,
paths and command lines written out (``\x1b``), so that a process named with
escape sequences cannot act on the terminal; JSON keeps them exact.

A socket held by several processes (a pre-fork server's listener) names its
lowest pid in ``pid``/``process``/``cmdline`` and counts every holder in ``owners``.

Lines are made straight from the snapshot's packed rows (``agent.table``), each
value's text once per snapshot, and written in slices as they are made: a host
with 200,000 sockets never holds its output, nor an object per socket, at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from typing import IO, Any

from sockfleet.agent.records import Proto, Snapshot, SocketRecord
from sockfleet.agent.table import KINDS, ROW, STATES, Sockets, SocketTable
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


def write(snapshot: Snapshot, out: IO[str], fmt: str, sockets: Iterable[SocketRecord] | None = None) -> None:
    """``snapshot`` (or only ``sockets`` of it) in ``fmt``, written as its rows are read: never all at once."""
    tables = _tables(snapshot.sockets if sockets is None else sockets)
    if fmt == "json":
        write_json(snapshot, out, tables)
    elif fmt == "csv":
        write_csv(snapshot, out, tables)
    else:
        write_table(snapshot, out, tables)


def _tables(sockets: Iterable[SocketRecord]) -> tuple[SocketTable, ...]:
    """The compact tables (``agent.table``) that hold ``sockets``: those of the scan, or new ones."""
    if isinstance(sockets, Sockets):
        return sockets.tables
    if isinstance(sockets, SocketTable):
        return (sockets,)
    return Sockets.of(sockets).tables


# Rows are formatted and written in slices of this many: a large host never holds all its text at once.
SLICE = 2048
_STATES = len(STATES)


class _Texts(dict[Any, str]):
    """Each distinct value's text, made once when first asked for: a host has far fewer values than sockets."""

    def __init__(self, make: Callable[[Any], str], known: dict[Any, str] | None = None) -> None:
        super().__init__(known or {})
        self.make = make

    def __missing__(self, value: Any) -> str:
        text = self[value] = self.make(value)
        return text


def _write_slices(out: IO[str], lines: Iterator[str], separator: str = "", between: str = "") -> None:
    """Write ``lines`` joined by ``separator``, in slices joined by ``between``."""
    join = separator.join
    first = True
    while chunk := list(islice(lines, SLICE)):
        out.write(join(chunk) if first else between + join(chunk))
        first = False


def write_json(snapshot: Snapshot, out: IO[str], tables: Iterable[SocketTable]) -> None:
    """One JSON array of objects with the ``FIELDS`` in order, as ``json.JSONEncoder(ensure_ascii=False)``
    writes them (separators ``", "`` and ``": "``; slices of rows joined by ``","``).

    Each process's, user's and address's text is encoded once, and each row is one ``%`` of a template
    on the numbers of its packed row: several times faster than encoding a dict per row.
    """
    from json.encoder import encode_basestring as quote

    host = quote(snapshot.host)
    owners = snapshot.owners
    nobody = '"pid": null, "process": null, "cmdline": null'
    processes = {
        pid: f'"pid": {pid}, "process": {quote(p.name)}, "cmdline": {quote(p.cmdline)}'
        for pid, p in snapshot.processes.items()
    }
    users = _Texts(lambda uid: f'"uid": {uid}, "user": null', {-1: '"uid": null, "user": null'})
    users.update(
        (uid, f'"uid": {uid}, "user": {quote(name) if name else "null"}') for uid, name in snapshot.users.items()
    )
    template = (
        '%s"local_address": %s, "local_port": %s, "remote_address": %s, "remote_port": %s, "path": %s, '
        '"peer_inode": %s, "inode": %s, %s, %s, "owners": %d, "rx_queue": %d, "tx_queue": %d}'
    )

    def objects() -> Iterator[str]:
        none = ()
        for table in tables:
            texts = [quote(text) if text is not None else "null" for text in table.strings]
            heads = _Texts(partial(_json_head, host, table.netns))
            for inode, peer, uid, local, remote, path, lport, rport, rx, tx, kind, state in ROW.iter_unpack(table.rows):
                pids = owners.get(inode, none)
                yield template % (
                    heads[kind * _STATES + state],
                    texts[local],
                    "null" if lport < 0 else lport,
                    texts[remote],
                    "null" if rport < 0 else rport,
                    texts[path],
                    peer or "null",
                    inode or "null",
                    users[uid],
                    processes.get(pids[0], nobody) if pids else nobody,
                    len(pids),
                    rx,
                    tx,
                )

    out.write("[")
    _write_slices(out, objects(), ", ", ",")
    out.write("]\n")


def _json_head(host: str, netns: int, key: int) -> str:
    (proto, family, kind), state = KINDS[key // _STATES], STATES[key % _STATES]
    return (
        f'{{"host": {host}, "netns": {netns}, "proto": "{proto}", "family": "{family}", "type": "{kind}", '
        f'"state": "{state}", '
    )


def _csv_quoted(text: str) -> str:
    """A cell as ``csv.writer`` (``QUOTE_MINIMAL``) writes it: in quotes when it holds a comma, quote or line end."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_text(text: str) -> str:
    """A cell of the host's users' text: control characters written out, as in the table."""
    return _csv_quoted(printable(text))


def write_csv(snapshot: Snapshot, out: IO[str], tables: Iterable[SocketTable]) -> None:
    """A header line and one line per socket, as ``csv.writer`` writes them; paths, user and process names
    and command lines with control characters written out, as the table shows them."""
    host = _csv_quoted(snapshot.host)
    owners = snapshot.owners
    nobody = ",,"
    processes = {pid: f"{pid},{_csv_text(p.name)},{_csv_text(p.cmdline)}" for pid, p in snapshot.processes.items()}
    users = _Texts(lambda uid: f"{uid},", {-1: ","})
    users.update((uid, f"{uid},{_csv_text(name) if name else ''}") for uid, name in snapshot.users.items())
    template = "%s%s,%s,%s,%s,%s,%s,%s,%s,%s,%d,%d,%d\n"

    def lines() -> Iterator[str]:
        none = ()
        for table in tables:
            addresses = ["" if text is None else _csv_quoted(text) for text in table.strings]
            paths = ["" if text is None else _csv_text(text) for text in table.strings]
            heads = _Texts(partial(_csv_head, host, table.netns))
            for inode, peer, uid, local, remote, path, lport, rport, rx, tx, kind, state in ROW.iter_unpack(table.rows):
                pids = owners.get(inode, none)
                yield template % (
                    heads[kind * _STATES + state],
                    addresses[local],
                    "" if lport < 0 else lport,
                    addresses[remote],
                    "" if rport < 0 else rport,
                    paths[path],
                    peer or "",
                    inode or "",
                    users[uid],
                    processes.get(pids[0], nobody) if pids else nobody,
                    len(pids),
                    rx,
                    tx,
                )

    out.write(",".join(FIELDS) + "\n")
    _write_slices(out, lines())


def _csv_head(host: str, netns: int, key: int) -> str:
    (proto, family, kind), state = KINDS[key // _STATES], STATES[key % _STATES]
    return f"{host},{netns},{proto},{family},{kind},{state},"


TABLE_HEADER = ("PROTO", "STATE", "RECV-Q", "SEND-Q", "LOCAL", "PEER", "USER", "PID", "PROCESS")
_UNIX = frozenset(number for number, (proto, _, _) in enumerate(KINDS) if proto is Proto.UNIX)
_KIND_CELLS = tuple(f"unix/{kind}" if proto is Proto.UNIX else str(proto) for proto, _, kind in KINDS)


def _lines(snapshot: Snapshot, tables: Iterable[SocketTable], template: str) -> Iterator[str]:
    """The table's line of each socket, straight from the packed rows (the hot path of a one-shot snapshot)."""
    owners = snapshot.owners
    users = _Texts(lambda uid: "", {uid: printable(name) if name else "" for uid, name in snapshot.users.items()})
    names = {pid: (str(pid), printable(p.name)) for pid, p in snapshot.processes.items()}
    nobody = ("", "")
    unix, cells, states = _UNIX, _KIND_CELLS, STATES
    none = ()
    for table in tables:
        hosts = [text if text is None or ":" not in text else f"[{text}]" for text in table.strings]
        hosts[0] = ""
        paths = [printable(text) if text else "*" for text in table.strings]
        for inode, peer, uid, local, remote, path, lport, rport, rx, tx, kind, state in ROW.iter_unpack(table.rows):
            if kind in unix:
                here = f"{paths[path]} {inode}"
                there = f"* {peer}" if peer else "*"
            else:
                here = f"{hosts[local]}:{lport}"
                there = f"{hosts[remote]}:{rport}" if remote else "*"
            pids = owners.get(inode, none)
            if pids:
                pid, owner = names.get(pids[0], nobody)
                if len(pids) > 1:
                    owner = f"{owner} (+{len(pids) - 1})"
            else:
                pid, owner = nobody
            yield template % (cells[kind], states[state], rx, tx, here, there, users[uid], pid, owner)


def _widths(snapshot: Snapshot, tables: Iterable[SocketTable]) -> list[int]:
    """Column widths from the distinct values, without formatting every row.

    Endpoint widths are upper bounds (a port is counted as five digits), so a
    column may be a few characters wider than its widest cell, never narrower.
    The columns of the packed rows are read straight from their buffers.
    """
    endpoint, unix_inode, queues = 1, 0, 0
    kinds: set[int] = set()
    states: set[int] = set()
    paths: set[str | None] = set()
    for table in tables:
        if not table.rows:
            continue
        words = memoryview(table.rows).cast("I")
        column = memoryview(table.rows).cast("B")
        table_kinds = column[52 :: ROW.size]
        kinds.update(table_kinds)
        states.update(column[53 :: ROW.size])
        rx, tx = max(words[11::14]), max(words[12::14])
        queues = max(queues, rx, tx)
        strings = table.strings
        found = {strings[i] for i in {*words[6::14], *words[7::14]}}
        endpoint = max(endpoint, max((len(a) + (8 if ":" in a else 6) for a in found if a), default=1))
        if not _UNIX.isdisjoint(table_kinds):
            inodes = memoryview(table.rows).cast("Q")[::7]
            unix_rows = [i for i, kind in enumerate(table_kinds) if kind in _UNIX]
            paths.update(strings[words[i * 14 + 8]] for i in unix_rows)
            unix_inode = max(unix_inode, *(inodes[i] for i in unix_rows))
    inode_digits = len(str(unix_inode))
    unix_local = max((len(p or "*") + 1 + inode_digits for p in paths), default=0)
    users = [u for u in snapshot.users.values() if u] + [p.user for p in snapshot.processes.values() if p.user]
    pids = [len(str(pid)) for pid in snapshot.processes]
    cells = (
        max((len(_KIND_CELLS[kind]) for kind in kinds), default=0),
        max((len(STATES[state]) for state in states), default=0),
        len(str(queues)),
        len(str(queues)),
        max(endpoint, unix_local),
        max(endpoint, 2 + inode_digits),
        max(map(len, users), default=0),
        max(pids, default=0),
    )
    return [max(len(title), cell) for title, cell in zip(TABLE_HEADER, cells, strict=False)]


def write_table(snapshot: Snapshot, out: IO[str], tables: Iterable[SocketTable]) -> None:
    """Columns like ``ss``: a Unix socket's LOCAL is its path and inode, its PEER the peer's inode.

    Lines are formatted and written in slices, so that a host with 200,000
    sockets never holds all its lines in memory at once.
    """
    tables = tuple(tables)
    template = "  ".join(f"%-{w}s" for w in _widths(snapshot, tables)) + "  %s\n"
    out.write(template % TABLE_HEADER)
    _write_slices(out, _lines(snapshot, tables, template))
