"""The spool: records in order, composed over its bound with the gap recorded, safe across a kill."""

from __future__ import annotations

from pathlib import Path

from sockfleet.agent import convert
from sockfleet.agent.spool import Spool, compose, key_bytes
from sockfleet.v1 import fleet_pb2 as pb
from tests.agent.scans import add, entry, ports, scan


def test_records_in_order_and_full_snapshot_of_the_head() -> None:
    spool = Spool()
    add(spool, scan(22, 80), 1)
    add(spool, scan(22, 80, 443), 2)
    add(spool, scan(22, 443), 3)
    assert [r.taken_at_us for r in spool.records] == [1, 2, 3]
    assert {s.key.local_port for s in spool.head_snapshot().sockets} == {22, 80}
    spool.pop()
    head = spool.head()
    assert head is not None
    assert [s.key.local_port for s in head.added] == [443]
    assert {s.key.local_port for s in spool.head_snapshot().sockets} == {22, 80, 443}
    spool.pop()
    spool.pop()
    assert ports(spool.base) == {22, 443}
    assert spool.head() is None


def test_compose() -> None:
    a = pb.Delta(added=[convert.socket(*entry(1))], changed=[convert.socket(*entry(2))], taken_at_us=1)
    b = pb.Delta(
        removed=[convert.socket_key(entry(1)[0]), convert.socket_key(entry(2)[0])],
        added=[convert.socket(*entry(3))],
        taken_at_us=2,
    )
    merged = compose(a, b)
    assert merged.taken_at_us == 2
    assert [s.key.local_port for s in merged.added] == [3]
    assert [k.local_port for k in merged.removed] == [2]  # 1 came and went within the two scans
    assert not merged.changed


def test_bound_composes_the_oldest_and_records_the_gap() -> None:
    spool = Spool(max_bytes=1)
    add(spool, scan(22), 1)
    add(spool, scan(22, 80), 2)
    add(spool, scan(22, 80, 443), 3)
    assert len(spool) == 2
    first = spool.head()
    assert first is not None
    assert first.taken_at_us == 2
    assert [(g.from_us, g.to_us, g.reason) for g in first.coverage.gaps] == [(1, 1, "agent spool full")]
    assert {s.key.local_port for s in spool.head_snapshot().sockets} == {22, 80}
    add(spool, scan(443), 4)  # a second composition: one gap covers every dropped scan
    first = spool.head()
    assert first is not None
    assert [(g.from_us, g.to_us) for g in first.coverage.gaps] == [(1, 2)]
    assert {s.key.local_port for s in spool.head_snapshot().sockets} == {22, 80, 443}


def test_survives_a_kill_and_a_torn_write(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    add(spool, scan(22), 1)
    add(spool, scan(22, 80), 2)  # two waiting: now on disk
    spool.pop()  # the first was acknowledged
    add(spool, scan(80), 3)
    [segment] = sorted(tmp_path.glob("*.seg"))
    with open(segment, "ab") as log:
        log.write(b"\x40\x00\x00\x00\x01\x02")  # the agent was killed while writing a record
    again = Spool(str(tmp_path))
    assert [r.taken_at_us for r in again.records] == [2, 3]
    assert ports(again.base) == {22}
    assert {s.key.local_port for s in again.head_snapshot().sockets} == {22, 80}
    add(again, scan(80, 443), 4)  # after a restart the next scan is diffed against the spool
    last = again.records[-1]
    assert [s.key.local_port for s in last.added] == [443]
    for _ in range(3):
        again.pop()
    assert [p.name for p in tmp_path.iterdir()] == ["lock"]  # all acknowledged: no scan left on disk


def test_spool_that_does_not_start_with_a_snapshot_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "base.snap").write_bytes(b"garbage that is not a spool")
    spool = Spool(str(tmp_path))
    assert len(spool) == 0
    assert (tmp_path / "base.snap.bad").exists()


def test_key_bytes_are_stable() -> None:
    key = convert.socket_key(entry(22)[0])
    assert key_bytes(key) == key_bytes(pb.SocketKey.FromString(key.SerializeToString()))


def test_bound_on_disk_writes_each_record_once(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1)
    for at, ports_open in enumerate([(22,), (22, 80), (80,), (80, 443), (443,)], start=1):
        add(spool, scan(*ports_open), at)
    again = Spool(str(tmp_path))
    assert [r.taken_at_us for r in again.records] == [r.taken_at_us for r in spool.records]
    assert ports(again.state()) == ports(spool.state()) == {443}


def closing(connections: int, sent: int | None, port: int = 8080) -> pb.Closings:
    flow = pb.ClosedFlow(
        netns=1, proto=pb.PROTO_TCP, role="s", process="web", local_address="10.0.0.1", local_port=port,
        remote_address="10.0.0.2", connections=connections, short_lived=connections, first_us=10, last_us=20,
    )  # fmt: skip
    if sent is not None:
        flow.sent_bytes, flow.received_bytes = sent, 2 * sent
    return pb.Closings(flows=[flow], lost=1)


def test_composed_scans_sum_their_closed_connections() -> None:
    first = pb.Delta(seq=1, taken_at_us=100, closed=closing(2, 100))
    second = pb.Delta(
        seq=2, taken_at_us=200, closed=pb.Closings(flows=[*closing(3, 50).flows, *closing(1, None, 9090).flows])
    )
    merged = compose(first, second).closed
    assert merged.lost == 1
    by_port = {f.local_port: f for f in merged.flows}
    assert (by_port[8080].connections, by_port[8080].sent_bytes, by_port[8080].received_bytes) == (5, 150, 300)
    assert not by_port[9090].HasField("sent_bytes")  # unknown bytes stay unknown


def test_a_full_snapshot_of_the_head_carries_its_closed_connections() -> None:
    spool = Spool()
    spool.add(scan(80), None, 1, pb.Coverage(namespaces_scanned=[1]), closed=closing(4, 10))
    assert spool.head_snapshot().closed.flows[0].connections == 4


def test_a_folder_others_use_is_never_taken_changed_or_emptied(tmp_path: Path) -> None:
    """``--spool /tmp`` or a folder of other files: refused, its mode and files left as they were."""
    import pytest

    from sockfleet.agent.errors import UsageError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UsageError, match="is shared"):
        Spool(str(shared), host="h")
    assert shared.stat().st_mode & 0o7777 == 0o1777
    busy = tmp_path / "busy"
    busy.mkdir(mode=0o755)
    (busy / "notes.tmp").write_text("x")
    (busy / "other.seg").write_text("x")
    with pytest.raises(UsageError, match=r"holds files that are not a spool's \(notes.tmp, other.seg\)"):
        Spool(str(busy), host="h")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.tmp", "other.seg"]
    assert busy.stat().st_mode & 0o777 == 0o755
    with pytest.raises(UsageError, match="does not exist"):
        Spool(str(tmp_path / "missing" / "spool"), host="h")
    assert not (tmp_path / "missing").exists()


def test_an_empty_folder_of_the_agents_own_becomes_private(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    spool = Spool(str(folder), host="h")
    assert folder.stat().st_mode & 0o777 == 0o700
    add(spool, scan(22), 1)
    add(spool, scan(22, 80), 2)  # two waiting: now on disk
    assert any(folder.glob("*.seg"))
    del spool
    assert len(Spool(str(folder), host="h").records) == 2  # a spool's own files: taken again
