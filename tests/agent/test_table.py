"""Compact rows: what goes into a socket table comes out as the same records, in order."""

from __future__ import annotations

import pytest

from sockfleet.agent.records import Family, Proto, SocketRecord, SockType, State
from sockfleet.agent.table import ROW, Sockets, SocketTable

NS = 4026531840
RECORDS = (
    SocketRecord(NS, Proto.TCP, Family.INET, SockType.STREAM, State.LISTEN, "0.0.0.0", 80, None, None,
                 None, None, 11, 0, 0, 128),
    SocketRecord(NS, Proto.TCP, Family.INET6, SockType.STREAM, State.ESTABLISHED, "::1", 443, "::1", 50000,
                 None, None, 12, 4_000_000_000, 7, 0),
    SocketRecord(NS, Proto.TCP, Family.INET6, SockType.STREAM, State.TIME_WAIT, "::1", 443, "::1", 50001,
                 None, None, 0, 0, 0, 0),
    SocketRecord(NS, Proto.UDP, Family.INET, SockType.DGRAM, State.UNCONN, "127.0.0.53", 53, None, None,
                 None, None, 2**40, None, 0, 0),
    SocketRecord(NS, Proto.UNIX, Family.UNIX, SockType.SEQPACKET, State.ESTABLISHED, None, None, None, None,
                 "@abstract", 99, 13, 1000, 1, 2),
    SocketRecord(NS, Proto.UNIX, Family.UNIX, SockType.DGRAM, State.UNCONN, None, None, None, None,
                 None, None, 14, None, 0, 0),
)  # fmt: skip


def test_rows_read_back_as_the_records_put_in() -> None:
    table = SocketTable.of(NS, RECORDS)
    assert len(table.rows) == len(RECORDS) * ROW.size == len(RECORDS) * 56
    assert tuple(table) == RECORDS
    assert table == RECORDS
    assert [table[i] for i in range(len(RECORDS))] == list(RECORDS)
    assert table[-1] == RECORDS[-1]
    assert table[1:3] == list(RECORDS[1:3])
    with pytest.raises(IndexError):
        table[len(RECORDS)]


def test_text_is_interned_once_per_table() -> None:
    table = SocketTable.of(NS, RECORDS)
    assert table.strings.count("::1") == 1
    assert table.strings[0] is None


def test_inodes_and_uids_are_read_from_the_buffer() -> None:
    table = SocketTable.of(NS, RECORDS)
    assert list(table.inodes()) == [r.inode for r in RECORDS]
    assert table.uids() == {0, 4_000_000_000, 1000}
    assert list(SocketTable(NS).inodes()) == []


def test_sockets_join_tables_in_order() -> None:
    other = SocketRecord(NS + 1, *RECORDS[0][1:])
    joined = Sockets.of([*RECORDS[:2], other, RECORDS[2]])
    assert [len(table) for table in joined.tables] == [2, 1, 1]
    assert [table.netns for table in joined.tables] == [NS, NS + 1, NS]
    assert tuple(joined) == (*RECORDS[:2], other, RECORDS[2])
    assert joined[2] == other and joined[-1] == RECORDS[2]
    assert joined.inodes() == {11, 12, 0}
    assert Sockets() == ()


def test_a_record_of_another_namespace_is_refused() -> None:
    with pytest.raises(ValueError, match="netns"):
        SocketTable(NS).append(SocketRecord(NS + 1, *RECORDS[0][1:]))
