"""Every kind of socket the zoo opens appears in ``sockfleet agent snapshot`` with its exact fields."""

from __future__ import annotations

import os

import pytest

from sockfleet.agent.records import Proto
from sockfleet.agent.snapshot import Scanner
from sockfleet.agent.sources import netlink, procfs
from tests.conftest import Zoo, run_sockfleet, snapshot_json

# The fields each zoo entry states; the /proc source cannot know a Unix peer.
COMPARED = (
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
    "pid",
    "owners",
)


def find(rows: list[dict[str, object]], expected: dict[str, object]) -> dict[str, object]:
    """The row for one zoo socket: by inode, or for a TIME_WAIT socket (inode 0) by its endpoints."""
    if expected["inode"]:
        matches = [row for row in rows if row["inode"] == expected["inode"]]
    else:
        keys = ("proto", "state", "local_address", "local_port", "remote_address", "remote_port")
        matches = [row for row in rows if all(row[key] == expected[key] for key in keys)]
    assert len(matches) == 1, f"expected one socket like {expected}, found {matches}"
    return matches[0]


def test_every_kind_appears_with_exact_fields(zoo: Zoo) -> None:
    rows = snapshot_json("--namespaces", "current")
    for name, expected in zoo.sockets.items():
        row = find(rows, expected)
        wanted = {key: expected.get(key) for key in COMPARED}
        wanted["inode"] = expected["inode"] or None
        got = {key: row[key] for key in COMPARED}
        assert got == wanted, name
        if expected["pid"] is not None:
            assert row["process"] == "sockzoo", name
            assert row["user"] == "root" if os.geteuid() == 0 else row["user"], name
            assert "tests.socket_zoo" in str(row["cmdline"]), name
            assert row["netns"] == os.stat("/proc/self/ns/net").st_ino


def test_unix_peers_pair_both_ways(zoo: Zoo) -> None:
    rows = {row["inode"]: row for row in snapshot_json("--namespaces", "current", "--proto", "unix")}
    for left, right in (("unix_pair_left", "unix_pair_right"), ("unix_client", "unix_server")):
        a = rows[zoo.sockets[left]["inode"]]
        b = rows[zoo.sockets[right]["inode"]]
        assert a["peer_inode"] == b["inode"]
        assert b["peer_inode"] == a["inode"]


def test_prefork_listener_counts_every_owner(zoo: Zoo) -> None:
    scanner = Scanner(scope="current", protos=frozenset({Proto.TCP}))
    snap = scanner.snapshot()
    inode = zoo.sockets["tcp_prefork_listen"]["inode"]
    assert snap.owners[inode] == (zoo.pid, zoo.worker)


def test_listening_filter_keeps_only_listeners(zoo: Zoo) -> None:
    rows = snapshot_json("--namespaces", "current", "--listening")
    inodes = {row["inode"] for row in rows}
    listeners = {
        "tcp4_listen",
        "tcp6_listen_v6only",
        "tcp_dualstack_listen",
        "udp4_bound",
        "udp6_bound",
        "unix_listen",
        "unix_dgram_bound",
        "unix_abstract_listen",
        "tcp_prefork_listen",
    }
    for name, entry in zoo.sockets.items():
        assert (entry["inode"] in inodes) == (name in listeners), name
    assert all(row["state"] in ("LISTEN", "UNCONN") for row in rows)


@pytest.mark.parametrize("proto", ["tcp", "udp", "unix"])
def test_proto_filter(zoo: Zoo, proto: str) -> None:
    rows = snapshot_json("--namespaces", "current", "--proto", proto)
    assert rows
    assert {row["proto"] for row in rows} == {proto}
    expected = {e["inode"] for e in zoo.sockets.values() if e["proto"] == proto and e["inode"]}
    assert expected <= {row["inode"] for row in rows}


def test_proc_source_sees_the_zoo_too(zoo: Zoo) -> None:
    snap = Scanner(scope="current", sources=(procfs,)).snapshot()
    by_inode = {s.inode: s for s in snap.sockets}
    for name, entry in zoo.sockets.items():
        if entry["inode"]:
            record = by_inode[entry["inode"]]
            assert (record.proto, record.state, record.path) == (entry["proto"], entry["state"], entry.get("path")), (
                name
            )
    assert [s.source for s in snap.coverage.sources] == ["procfs"]


def test_csv_and_table_formats(zoo: Zoo) -> None:
    csv_out = run_sockfleet("agent", "snapshot", "--namespaces", "current", "--format", "csv").stdout
    header, *lines = csv_out.splitlines()
    assert header.startswith("host,netns,proto,family,type,state,local_address,local_port")
    assert any(str(zoo.sockets["tcp4_listen"]["inode"]) in line for line in lines)
    table = run_sockfleet("agent", "snapshot", "--namespaces", "current", "--listening").stdout
    port = zoo.sockets["tcp4_listen"]["local_port"]
    assert any(f"127.0.0.1:{port}" in line and "sockzoo" in line for line in table.splitlines())
    assert table.splitlines()[0].split()[:2] == ["PROTO", "STATE"]


def test_bad_proto_is_one_clear_line() -> None:
    result = run_sockfleet("agent", "snapshot", "--proto", "tcp,sctp", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sockfleet: error: --proto takes a comma-separated list of tcp, udp, unix, not 'tcp,sctp'"
    )
    assert result.stdout == ""


def test_sources_named_in_help() -> None:
    text = run_sockfleet("agent", "snapshot", "--help").stdout
    for source in (netlink, procfs):
        assert source.NAME in text
