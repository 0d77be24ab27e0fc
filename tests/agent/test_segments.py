"""The spool on disk: segments that never need the spool's size again, and a disk that fills up."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockfleet.agent import convert
from sockfleet.agent.errors import UsageError
from sockfleet.agent.segments import SEGMENT_BYTES, Segments
from sockfleet.agent.spool import Spool
from sockfleet.v1 import fleet_pb2 as pb
from tests.agent.scans import add, ports, scan
from tests.collector.harness import ENV
from tests.conftest import ROOT


def record(number: int, size: int = 0) -> pb.Delta:
    delta = pb.Delta(seq=number, taken_at_us=number)
    if size:
        delta.coverage.sources.add(source="netlink", error="x" * size)
    return delta


def test_records_come_back_in_order_and_acknowledged_ones_fold(tmp_path: Path) -> None:
    disk = Segments(tmp_path)
    disk.write_base(pb.Snapshot(seq=0))
    for number in range(1, 6):
        disk.append(record(number))
    disk.set_acked(2)
    loaded = Segments(tmp_path).load()
    assert loaded is not None
    assert loaded.acked == 2
    assert [r.seq for r in loaded.records] == [1, 2, 3, 4, 5]


def test_segments_roll_over_and_a_new_base_removes_the_folded_ones(tmp_path: Path) -> None:
    disk = Segments(tmp_path)
    disk.write_base(pb.Snapshot(seq=0))
    for number in range(1, 9):
        disk.append(record(number, SEGMENT_BYTES // 3))
    assert len(list(tmp_path.glob("*.seg"))) == 3
    disk.write_base(pb.Snapshot(seq=6))  # scans up to 6 are now in the base
    assert len(list(tmp_path.glob("*.seg"))) == 1
    loaded = Segments(tmp_path).load()
    assert loaded is not None and [r.seq for r in loaded.records] == [7, 8]


def test_composing_rewrites_only_the_segments_that_hold_the_two(tmp_path: Path) -> None:
    disk = Segments(tmp_path)
    disk.write_base(pb.Snapshot(seq=0))
    for number in range(1, 9):
        disk.append(record(number, SEGMENT_BYTES // 3))
    untouched = sorted(tmp_path.glob("*.seg"))[-1]
    before = untouched.stat().st_mtime_ns, untouched.read_bytes()
    merged = record(2)
    merged.coverage.gaps.add(from_us=1, to_us=1, reason="agent spool full")
    disk.replace(1, merged)
    assert (untouched.stat().st_mtime_ns, untouched.read_bytes()) == before
    loaded = Segments(tmp_path).load()
    assert loaded is not None
    assert [r.seq for r in loaded.records] == [2, 3, 4, 5, 6, 7, 8]
    assert loaded.records[0].coverage.gaps[0].reason == "agent spool full"


def test_a_torn_record_is_cut_off_without_writing(tmp_path: Path) -> None:
    disk = Segments(tmp_path)
    disk.write_base(pb.Snapshot(seq=0))
    disk.append(record(1))
    disk.append(record(2))
    [segment] = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(b"\x40\x00\x00\x00\x01")
    loaded = Segments(tmp_path).load()
    assert loaded is not None and [r.seq for r in loaded.records] == [1, 2]
    assert segment.stat().st_size == size


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real disk that fills up (mounting needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        gc.collect()  # the test's spools let go of their folder's lock
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the disk; the file returned gives them back."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while _write(fd):
            pass
    finally:
        os.close(fd)
    return filler


def _write(fd: int) -> bool:
    """Whether 4 KiB more fit; only a full disk may stop it."""
    try:
        os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


def many(first: int, count: int) -> dict[convert.Key, convert.Entry]:
    return scan(*range(first, first + count))


@pytest.mark.root
def test_a_full_disk_keeps_scans_in_memory_and_writes_them_when_space_returns(small_disk: Path) -> None:
    spool = Spool(str(small_disk / "spool"))
    add(spool, many(1, 50), 1)
    add(spool, many(1, 60), 2)  # not acknowledged at once: on disk from here
    assert (small_disk / "spool" / "base.snap").exists()
    filler = fill(small_disk)
    for at in range(3, 13):
        add(spool, many(at * 100, 200), at)  # every write fails: no exception, every scan kept
    assert spool.failing is not None
    assert [r.taken_at_us for r in spool.records] == list(range(1, 13))
    # A restart now would find only what reached the disk, and say the rest was lost.
    early = Spool(str(small_disk / "spool"))
    assert [r.taken_at_us for r in early.records] == [1, 2]
    filler.unlink()
    add(spool, many(1300, 200), 13)
    assert spool.failing is None
    again = Spool(str(small_disk / "spool"))
    assert [r.taken_at_us for r in again.records] == list(range(1, 14))
    assert ports(again.state()) == ports(spool.state())
    add(again, many(1300, 200), 14)
    assert again.records[-1].coverage.gaps[0].reason == "agent restarted: no scan kept in between"


@pytest.mark.root
def test_a_spool_loads_and_drains_on_a_full_disk(small_disk: Path) -> None:
    spool = Spool(str(small_disk / "spool"))
    for at in range(1, 5):
        add(spool, many(at * 10, 40), at)
    fill(small_disk)
    again = Spool(str(small_disk / "spool"))  # starting needs no free space
    assert len(again) == 4
    while len(again):
        again.pop()  # acknowledgements are written in place
    assert [p.name for p in (small_disk / "spool").iterdir()] == ["lock"]


@pytest.mark.root
def test_composing_on_a_full_disk_keeps_the_disk_a_chain(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The oldest scans composed while a rewrite does not fit: the disk is cut, never left half rewritten."""
    folder = small_disk / "spool"
    first = Spool(str(folder), max_bytes=10_000)
    add(first, many(1, 20), 1)
    first.persist()  # one scan waits on disk ...
    del first
    gc.collect()
    spool = Spool(str(folder), max_bytes=10_000)  # ... and a restarted agent's scans go to a new segment
    add(spool, many(1, 25), 2)
    filler = fill(small_disk)
    for at in range(3, 9):
        add(spool, many(at * 100, 60), at)  # over the bound: composed in memory, the disk cannot follow
    assert "no room to rewrite a segment" in caplog.text
    filler.unlink()
    add(spool, many(900, 60), 9)
    again = Spool(str(folder), max_bytes=10_000)
    assert [r.taken_at_us for r in again.records] == [r.taken_at_us for r in spool.records]
    assert ports(again.state()) == ports(spool.state())


@pytest.mark.root
def test_scans_that_never_reached_a_full_disk_are_a_gap_after_a_restart(small_disk: Path) -> None:
    filler = fill(small_disk)
    spool = Spool(str(small_disk / "spool"))
    add(spool, many(1, 20), 1)
    add(spool, many(1, 30), 2)  # waiting, and not even the base fits
    assert spool.failing is not None and not (small_disk / "spool" / "base.snap").exists()
    del spool  # the agent is killed
    gc.collect()
    filler.unlink()
    again = Spool(str(small_disk / "spool"))
    add(again, many(1, 30), 5_000_000)
    [gap] = again.records[-1].coverage.gaps
    assert gap.reason == "agent restarted: no scan kept in between"


def test_a_spool_is_one_agents(tmp_path: Path) -> None:
    held = Spool(str(tmp_path / "spool"), host="db-1")
    add(held, many(1, 5), 1)
    add(held, many(1, 6), 2)  # scans of db-1 wait on disk
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from agent.spool import Spool; Spool(sys.argv[1], host='db-1')",
            str(tmp_path / "spool"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        check=False,
    )
    assert "another agent uses this folder" in other.stderr  # a second process is kept off
    del held
    gc.collect()
    with pytest.raises(UsageError, match="it holds scans of host 'db-1', not of 'web-1'"):
        Spool(str(tmp_path / "spool"), host="web-1")
    assert len(Spool(str(tmp_path / "spool"), host="db-1")) == 2
