"""Sockets held as compact rows: 56 bytes each in one buffer, rather than an object per socket.

A busy host has hundreds of thousands of sockets; a ``SocketRecord`` per socket costs about 300 bytes
with its integers, a packed row 56.  A ``SocketTable`` holds the sockets one source read in one network
namespace: each row is ``ROW`` packed, its text (addresses and Unix paths) interned in the table's
``strings`` and referred to by number::

    inode       u64   the socket's inode (0: a socket without one, as a TIME_WAIT socket)
    peer        i64   a Unix socket's peer inode (0: none)
    uid         i64   the socket's uid (-1: unknown)
    local       u32   number of the local address in ``strings`` (0: none)
    remote      u32   number of the peer address (0: none)
    path        u32   number of a Unix socket's path (0: none)
    local port  i32   (-1: none)
    remote port i32   (-1: none)
    rx, tx      u32   queue lengths
    kind        u8    proto, family and type: ``KINDS[kind]``
    state       u8    ``STATES[state]``
    (2 bytes of padding: 56 in all, so the inodes are every 7th u64 of the buffer)

Reading a table yields ``SocketRecord`` s made on the fly, one at a time: whoever iterates a snapshot
sees records, as before, while the snapshot itself holds only rows.  ``Sockets`` joins the tables of
one scan (one per namespace) without copying them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import overload

from sockfleet.agent.records import Family, Proto, SocketRecord, SockType, State

ROW = struct.Struct("=QqqIIIiiIIBBxx")
_WORDS = 7  # a row is 7 64-bit words: the inode is the first, the uid the third

KINDS = tuple((proto, family, kind) for proto in Proto for family in Family for kind in SockType)
KIND: dict[tuple[Proto, Family, SockType], int] = {kind: number for number, kind in enumerate(KINDS)}
STATES = tuple(State)
STATE: dict[State, int] = {state: number for number, state in enumerate(STATES)}


class SocketTable(Sequence[SocketRecord]):
    """The sockets of one namespace as one source read them, as packed rows (see the module)."""

    __slots__ = ("_numbers", "netns", "rows", "strings")

    def __init__(self, netns: int) -> None:
        self.netns = netns
        self.rows = bytearray()
        self.strings: list[str | None] = [None]
        self._numbers: dict[str | None, int] = {None: 0}

    @classmethod
    def of(cls, netns: int, records: Iterable[SocketRecord]) -> SocketTable:
        table = cls(netns)
        for record in records:
            table.append(record)
        return table

    def text(self, value: str | None) -> int:
        """The number of ``value`` in ``strings``, added the first time it is seen."""
        number = self._numbers.get(value)
        if number is None:
            number = self._numbers[value] = len(self.strings)
            self.strings.append(value)
        return number

    def add(
        self,
        proto: Proto,
        family: Family,
        kind: SockType,
        state: State,
        local: str | None,
        local_port: int | None,
        remote: str | None,
        remote_port: int | None,
        path: str | None,
        peer: int | None,
        inode: int,
        uid: int | None,
        rx_queue: int,
        tx_queue: int,
    ) -> None:
        """One socket of this table's namespace, given as a ``SocketRecord``'s fields after ``netns``."""
        text = self.text
        self.rows += ROW.pack(
            inode,
            peer or 0,
            -1 if uid is None else uid,
            text(local),
            text(remote),
            text(path),
            -1 if local_port is None else local_port,
            -1 if remote_port is None else remote_port,
            rx_queue,
            tx_queue,
            KIND[proto, family, kind],
            STATE[state],
        )

    def append(self, record: SocketRecord) -> None:
        if record.netns != self.netns:
            raise ValueError(f"a socket of netns {record.netns} in the table of netns {self.netns}")
        self.add(*record[1:])

    def __len__(self) -> int:
        return len(self.rows) // ROW.size

    def __iter__(self) -> Iterator[SocketRecord]:
        netns, strings, kinds, states = self.netns, self.strings, KINDS, STATES
        new = tuple.__new__
        for inode, peer, uid, local, remote, path, lport, rport, rx, tx, kind, state in ROW.iter_unpack(self.rows):
            proto, family, socktype = kinds[kind]
            yield new(SocketRecord, (netns, proto, family, socktype, states[state], strings[local],
                                     None if lport < 0 else lport, strings[remote], None if rport < 0 else rport,
                                     strings[path], peer or None, inode, None if uid < 0 else uid, rx, tx))  # fmt: skip

    @overload
    def __getitem__(self, index: int) -> SocketRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[SocketRecord]: ...

    def __getitem__(self, index: int | slice) -> SocketRecord | list[SocketRecord]:
        if isinstance(index, slice):
            return list(self)[index]
        count = len(self)
        if not -count <= index < count:
            raise IndexError("socket table index out of range")
        inode, peer, uid, local, remote, path, lport, rport, rx, tx, kind, state = ROW.unpack_from(
            self.rows, (index % count) * ROW.size
        )
        strings = self.strings
        proto, family, socktype = KINDS[kind]
        return SocketRecord(self.netns, proto, family, socktype, STATES[state], strings[local],
                            None if lport < 0 else lport, strings[remote], None if rport < 0 else rport,
                            strings[path], peer or None, inode, None if uid < 0 else uid, rx, tx)  # fmt: skip

    def inodes(self) -> Sequence[int]:
        """Every row's inode, read straight from the buffer."""
        return memoryview(self.rows).cast("Q")[::_WORDS] if self.rows else ()

    def uids(self) -> set[int]:
        """The sockets' known uids, read straight from the buffer."""
        found = set(memoryview(self.rows).cast("q")[2::_WORDS]) if self.rows else set()
        found.discard(-1)
        return found

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SocketTable(netns={self.netns}, {len(self)} sockets)"


class Sockets(Sequence[SocketRecord]):
    """The sockets of one scan: its tables, one per namespace, read in order without being copied."""

    __slots__ = ("tables",)

    def __init__(self, tables: Iterable[SocketTable] = ()) -> None:
        self.tables = tuple(tables)

    @classmethod
    def of(cls, records: Iterable[SocketRecord]) -> Sockets:
        """``records`` in tables, in their order: a new table wherever the namespace changes."""
        tables: list[SocketTable] = []
        for record in records:
            if not tables or tables[-1].netns != record.netns:
                tables.append(SocketTable(record.netns))
            tables[-1].append(record)
        return cls(tables)

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables)

    def __iter__(self) -> Iterator[SocketRecord]:
        return chain.from_iterable(self.tables)

    @overload
    def __getitem__(self, index: int) -> SocketRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[SocketRecord]: ...

    def __getitem__(self, index: int | slice) -> SocketRecord | list[SocketRecord]:
        if isinstance(index, slice):
            return list(self)[index]
        count = len(self)
        if not -count <= index < count:
            raise IndexError("sockets index out of range")
        index %= count
        for table in self.tables:
            if index < len(table):
                return table[index]
            index -= len(table)
        raise AssertionError("unreachable")  # pragma: no cover

    def inodes(self) -> set[int]:
        found: set[int] = set()
        for table in self.tables:
            found.update(table.inodes())
        return found

    def uids(self) -> set[int]:
        return set().union(*(table.uids() for table in self.tables))

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sockets({len(self)} sockets in {len(self.tables)} tables)"


def _equal(sockets: Sequence[SocketRecord], other: object) -> bool:
    """Equal to another table, or to a tuple of the same records (what a snapshot held before)."""
    return isinstance(other, (SocketTable, Sockets, tuple)) and tuple(sockets) == tuple(other)
