"""Snapshots as a whole: a fixture /proc tree, coverage, other users, other namespaces."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockfleet.agent.owners import OwnerIndex
from sockfleet.agent.records import Namespace, Proto, SocketRecord
from sockfleet.agent.snapshot import Scanner
from sockfleet.agent.sources import netlink, procfs
from sockfleet.agent.table import Sockets
from tests.agent.tables import TCP6_TABLE, TCP_TABLE, UNIX_TABLE
from tests.conftest import Zoo, run_sockfleet, snapshot_json

FIXTURES = Path(__file__).parent / "fixtures"
UDP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
is_root = os.geteuid() == 0


def user_name(uid: int | None) -> str | None:
    try:
        return None if uid is None else pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def make_proc(root: Path) -> Path:
    """A /proc with one process (pid 123) holding two sockets, and its namespace's tables."""
    proc = root / "proc"
    (proc / "123" / "ns").mkdir(parents=True)
    (proc / "123" / "net").mkdir()
    (proc / "123" / "fd").mkdir()
    (proc / "self").symlink_to("123")
    (proc / "123" / "ns" / "net").write_text("")
    (proc / "123" / "stat").write_text("123 (fixture (d)) S 1 123 123 0 -1 4194560 " + "0 " * 12 + "98765 0 0\n")
    (proc / "123" / "cmdline").write_bytes(b"fixtured\0--port\x008080\0")
    tables = {"tcp": TCP_TABLE, "tcp6": TCP6_TABLE, "udp": UDP_HEADER, "udp6": UDP_HEADER, "unix": UNIX_TABLE}
    for name, text in tables.items():
        (proc / "123" / "net" / name).write_text(text)
    (proc / "123" / "fd" / "3").symlink_to("socket:[4242]")
    (proc / "123" / "fd" / "4").symlink_to("/dev/null")
    (proc / "123" / "fd" / "5").symlink_to("socket:[4244]")
    return proc


def test_fixture_proc_tree_matches_golden_output(tmp_path: Path) -> None:
    proc = make_proc(tmp_path)
    rows = snapshot_json("--proc-root", str(proc), "--source", "procfs", "--namespaces", "current", "--host", "fixture")
    netns = (proc / "123" / "ns" / "net").stat().st_ino
    for row in rows:
        assert row.pop("netns") == netns
    golden = json.loads((FIXTURES / "proc_snapshot.json").read_text())
    for row in golden:
        row["user"] = user_name(row["uid"])  # names differ between machines
    assert rows == golden


def test_fixture_proc_tree_in_every_format(tmp_path: Path) -> None:
    proc = make_proc(tmp_path)
    args = ("agent", "snapshot", "--proc-root", str(proc), "--source", "procfs", "--namespaces", "current")
    table = run_sockfleet(*args).stdout.splitlines()
    assert table[0].split() == ["PROTO", "STATE", "RECV-Q", "SEND-Q", "LOCAL", "PEER", "USER", "PID", "PROCESS"]
    assert any("127.0.0.1:8080" in line and "fixture (d)" in line for line in table)
    assert any("[::ffff:127.0.0.1]:8080" in line and "TIME_WAIT" in line for line in table)
    csv_lines = run_sockfleet(*args, "--format", "csv").stdout.splitlines()
    assert len(csv_lines) == 1 + 7


class Refused:
    """Stands in for a source the kernel refuses; a real refusal needs a kernel without sock_diag."""

    NAME = "refused"
    DESCRIPTION = "always fails"

    @staticmethod
    def collect(ns: Namespace, protos: frozenset[Proto], proc_root: str = "/proc") -> list[SocketRecord]:
        from sockfleet.agent.errors import SourceError

        raise SourceError("refused", "Operation not permitted")


def test_failed_source_falls_back_and_is_recorded(tmp_path: Path) -> None:
    proc = make_proc(tmp_path)
    snap = Scanner(scope="current", sources=(Refused, procfs), proc_root=str(proc)).snapshot()
    assert len(snap.sockets) == 7
    refused, used = snap.coverage.sources
    assert (refused.source, refused.ok, refused.error) == ("refused", False, "refused: Operation not permitted")
    assert (used.source, used.ok, used.records) == ("procfs", True, 7)
    assert snap.owners == {4242: (123,), 4244: (123,)}
    assert not snap.coverage.complete


def test_namespace_no_source_can_read_is_unscanned(tmp_path: Path) -> None:
    proc = make_proc(tmp_path)
    (proc / "123" / "net" / "unix").unlink()
    snap = Scanner(scope="current", sources=(procfs,), proc_root=str(proc)).snapshot()
    assert snap.sockets == ()
    [(_ns, reason)] = snap.coverage.namespaces_unscanned
    assert reason.startswith("procfs: cannot read ") and reason.endswith("unix: No such file or directory")


def test_warm_scan_reads_only_new_links(zoo: Zoo) -> None:
    scanner = Scanner(scope="current")
    first = scanner.snapshot()
    links_after_first = scanner.owners.links_read
    second = scanner.snapshot()
    assert scanner.owners.links_read - links_after_first < 50  # only descriptors opened in between
    inode = zoo.sockets["tcp4_listen"]["inode"]
    assert first.owners[inode] == second.owners[inode] == (zoo.pid,)


def test_warm_scan_follows_a_reused_descriptor_number() -> None:
    import socket

    scanner = Scanner(scope="current", protos=frozenset({Proto.UDP}))
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first.bind(("127.0.0.1", 0))
    fd = first.fileno()
    scanner.snapshot()
    first.close()
    # A file takes the number first, then a new socket: the cache must notice both changes.
    with open(os.devnull) as devnull:
        assert devnull.fileno() == fd
        scanner.snapshot()
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second.bind(("127.0.0.1", 0))
    try:
        assert second.fileno() == fd
        snap = scanner.snapshot()
        assert snap.owners[os.fstat(second.fileno()).st_ino] == (os.getpid(),)
    finally:
        second.close()


@pytest.mark.root
@pytest.mark.skipif(not is_root or shutil.which("setpriv") is None, reason="needs root to switch to another user")
def test_unprivileged_scan_records_what_it_cannot_see(zoo: Zoo) -> None:
    result = run_sockfleet("agent", "snapshot", "--coverage", "--format", "json", user=65534)
    coverage = json.loads(result.stdout)
    assert zoo.pid in coverage["processes_unreadable"]
    rows = snapshot_json("--namespaces", "current", user=65534)
    row = next(r for r in rows if r["inode"] == zoo.sockets["tcp4_listen"]["inode"])
    assert row["pid"] is None and row["uid"] == 0  # the kernel still names the socket's owner uid
    stderr = run_sockfleet("agent", "snapshot", user=65534).stderr
    assert "process(es) unreadable" in stderr


@pytest.fixture
def namespace_host() -> Iterator[tuple[str, int, int]]:
    """A network namespace with a listener on 127.0.0.1:7777 held by a process inside it."""
    name = f"sf-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    script = (
        "import socket,sys,os\n"
        "subprocess_lo = os.system('ip link set lo up')\n"
        "s = socket.create_server(('127.0.0.1', 7777))\n"
        "print(os.getpid(), os.stat('/proc/self/ns/net').st_ino, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        pid, inode = map(int, proc.stdout.readline().split())
        yield name, pid, inode
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.root
@pytest.mark.skipif(not is_root or shutil.which("ip") is None, reason="network namespaces need root and iproute2")
def test_every_namespace_is_scanned(namespace_host: tuple[str, int, int]) -> None:
    name, pid, inode = namespace_host
    empty = f"{name}-empty"
    subprocess.run(["ip", "netns", "add", empty], check=True)
    try:
        rows = snapshot_json("--proto", "tcp", "--listening")
        mine = [r for r in rows if r["netns"] == inode and r["local_port"] == 7777]
        assert [(r["local_address"], r["pid"]) for r in mine] == [("127.0.0.1", pid)]
        current = snapshot_json("--proto", "tcp", "--listening", "--namespaces", "current")
        assert not [r for r in current if r["netns"] == inode]
        empty_inode = os.stat(f"/run/netns/{empty}").st_ino
        via_proc = Scanner(sources=(procfs,)).snapshot().coverage
        assert any(ns == str(empty_inode) and "no process" in why for ns, why in via_proc.namespaces_unscanned)
        via_netlink = Scanner(sources=(netlink,)).snapshot().coverage
        assert empty_inode in via_netlink.namespaces_scanned
    finally:
        subprocess.run(["ip", "netns", "del", empty], check=True)


def test_prefetched_owners_equal_a_plain_walk(zoo: Zoo) -> None:
    plain = Scanner(scope="current").snapshot()
    scanner = Scanner(scope="current", prefetch_owners=True)
    prefetched = scanner.snapshot()
    # The zoo's sockets, whose owners stay put (another process's socket may change hands between two scans).
    made = {sock["inode"] for sock in zoo.sockets.values() if sock.get("inode")}
    stable = {s.inode for s in plain.sockets} & {s.inode for s in prefetched.sockets} & made
    assert len(stable) == len(made) > 5
    for inode in stable:
        assert plain.owners.get(inode) == prefetched.owners.get(inode), inode
    inode = zoo.sockets["tcp_prefork_listen"]["inode"]
    assert prefetched.owners[inode] == (zoo.pid, zoo.worker)
    # The next scans of the same scanner are warm: they read the links of processes new since, few of them.
    # Other tests start processes meanwhile: the quietest of five scans is the one to judge.
    read = []
    for _ in range(5):
        before = scanner.owners.links_read
        scanner.snapshot()
        read.append(scanner.owners.links_read - before)
    assert min(read) < 50, read


def test_a_walk_shared_with_a_child_equals_a_plain_walk(zoo: Zoo) -> None:
    """The child is forked whatever the host's size and load (``least=0``); both walks agree."""
    inodes = Scanner(scope="current").snapshot().sockets
    assert isinstance(inodes, Sockets)
    alive = inodes.inodes()
    plain = OwnerIndex().refresh(alive)
    shared = OwnerIndex()
    shared.prefetch(least=0)
    assert shared._pending is not None
    owners = shared.refresh(alive)
    inode = zoo.sockets["tcp_prefork_listen"]["inode"]
    assert owners[inode] == plain[inode] == (zoo.pid, zoo.worker)
    assert sum(owners.get(i) == plain.get(i) for i in alive) >= len(alive) - 50  # but sockets that came or went
