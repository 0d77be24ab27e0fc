"""A snapshot of the fixture tree, byte for byte: every output format and the wire messages.

``tests/agent/fixtures/tree`` holds a ``/proc`` of four processes (a pre-fork listener held three
times by two processes, a process name with an escape character, a command line over the wire's
bound, descriptors of files and pipes, a process holding no socket) and the same namespace as sock_diag dumps (``netlink/*.bin``).
``tree_snapshot.json`` is what ``agent snapshot`` printed from it, and what the spool made of it,
before sockets were held as compact rows: the two must never differ.  The namespace's inode depends
on the checkout, so the golden text says ``NETNS`` where it goes.

After a deliberate change of output, write the golden file again with
``python -m tests.agent.test_golden`` and review its diff.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from sockfleet.agent import cli, convert
from sockfleet.agent.delta import diff
from sockfleet.agent.snapshot import Scanner
from sockfleet.agent.sources import netlink, procfs
from sockfleet.agent.spool import Spool

TREE = Path(__file__).parent / "fixtures" / "tree"
PROC = TREE / "proc"
GOLDEN = Path(__file__).parent / "fixtures" / "tree_snapshot.json"
TAKEN_AT_US = 1_700_000_000_000_000
DUMPS: dict[tuple[int, int], str] = {
    (socket.AF_INET, socket.IPPROTO_TCP): "tcp4.bin",
    (socket.AF_INET6, socket.IPPROTO_TCP): "tcp6.bin",
    (socket.AF_INET, socket.IPPROTO_UDP): "udp4.bin",
    (socket.AF_INET6, socket.IPPROTO_UDP): "udp6.bin",
}
# Each command line, as ``agent snapshot`` takes it; the source comes first.
COMMANDS = {
    f"{source} {' '.join(extra)}".strip(): ["--source", source, *extra]
    for source in ("procfs", "netlink")
    for extra in (
        ("--format", "json"),
        ("--format", "csv"),
        ("--format", "table"),
        ("--format", "json", "--listening"),
        ("--format", "table", "--listening"),
        ("--format", "csv", "--proto", "udp,unix"),
    )
}


def netns_inode() -> int:
    return os.stat(PROC / "100" / "ns" / "net").st_ino


@contextlib.contextmanager
def replayed_dumps() -> Iterator[None]:
    """sock_diag answers read from ``netlink/*.bin`` instead of the kernel (the request picks the file)."""
    real = netlink.dump

    def dump(sock: object, message: bytes) -> Iterator[bytes]:
        del sock
        family, protocol = message[netlink.NLMSGHDR.size], message[netlink.NLMSGHDR.size + 1]
        name = "unix.bin" if family == socket.AF_UNIX else DUMPS[(family, protocol)]
        yield (TREE / "netlink" / name).read_bytes()

    netlink.dump = dump
    try:
        yield
    finally:
        netlink.dump = real


def printed(args: list[str]) -> str:
    """What ``sockfleet agent snapshot ARGS`` prints for the fixture tree, the namespace's inode as NETNS."""
    common = ["snapshot", "--proc-root", str(PROC), "--namespaces", "current", "--host", "fixture"]
    out = io.StringIO()
    with replayed_dumps(), contextlib.redirect_stdout(out):
        assert cli.main([*common, *args]) == 0
    return out.getvalue().replace(str(netns_inode()), "NETNS")


def scanner(source: str) -> Scanner:
    chosen = procfs if source == "procfs" else netlink
    return Scanner("fixture", "current", sources=(chosen,), proc_root=str(PROC))


def wire() -> dict[str, str]:
    """The procfs scan as the spool's first record (a full snapshot), then the netlink scan as a delta on it."""
    spool = Spool()
    with replayed_dumps():
        first, second = scanner("procfs").snapshot(), scanner("netlink").snapshot()
    texts = {}
    current = convert.entries(first)
    spool.add(current, None, TAKEN_AT_US, convert.coverage(first.coverage))
    texts["snapshot"] = text_format.MessageToString(spool.head_snapshot())
    later = convert.entries(second)
    assert spool.tail is not None
    spool.add(later, diff(spool.tail, later), TAKEN_AT_US + 15_000_000, convert.coverage(second.coverage))
    texts["delta"] = text_format.MessageToString(spool.records[1])
    inode = str(netns_inode())
    return {name: _steady(text).replace(inode, "NETNS") for name, text in texts.items()}


def _steady(text: str) -> str:
    """Message text without the sources' timings, which differ every scan."""
    return "".join(line for line in text.splitlines(keepends=True) if "duration_us" not in line)


def outputs() -> dict[str, Any]:
    return {"agent snapshot": {name: printed(args) for name, args in COMMANDS.items()}, "wire": wire()}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_snapshot_prints_the_golden_text(command: str, golden: dict[str, Any]) -> None:
    assert printed(COMMANDS[command]) == golden["agent snapshot"][command]


def test_spool_makes_the_golden_messages(golden: dict[str, Any]) -> None:
    assert wire() == golden["wire"]


def test_golden_json_is_a_snapshot_of_the_tree(golden: dict[str, Any]) -> None:
    """The golden JSON itself says what the tree holds: owners, escapes and bounds are in it."""
    rows = {
        row["inode"]: row for row in json.loads(golden["agent snapshot"]["procfs --format json"].replace("NETNS", "1"))
    }
    assert rows[1001]["owners"] == 2 and rows[1001]["pid"] == 100  # held by 100 and 101 (twice)
    assert rows[1001]["process"] == "web\x1bserver"
    assert "\\x1b" in golden["agent snapshot"]["procfs --format table"]
    assert rows[1005]["cmdline"].startswith("batch --rows=999") and len(rows[1005]["cmdline"]) > 4096
    assert rows[1005]["pid"] == 400 and rows[1004]["pid"] == 101 and rows[3001]["process"] == "resolver"
    assert "…[+" in golden["wire"]["snapshot"]  # the long command line cut to the wire's bound


def main() -> int:
    """Write the golden file from the code as it is (review the diff before keeping it)."""
    GOLDEN.write_text(json.dumps(outputs(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
