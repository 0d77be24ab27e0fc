"""Connections that closed between two scans, from the kernel's socket-destroy events: the parser on fixture
bytes, and the listener on real connections (IPv4, IPv6, connected UDP, another namespace), against a
kernel that drops events, and without CAP_NET_ADMIN."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockfleet.agent import events
from sockfleet.agent.errors import ParseError
from sockfleet.agent.events import Closings, Events
from sockfleet.agent.netns import current_namespace
from sockfleet.agent.records import Namespace, Proto
from sockfleet.agent.snapshot import Scanner
from sockfleet.connections import CALLING, SERVED
from tests.conftest import ROOT
from tests.traffic import exchange

NS = 4026531840
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="joining sock_diag groups needs CAP_NET_ADMIN")


def event(family: int, sport: int, dport: int, src: str, dst: str, protocol: int, info: bytes | None) -> bytes:
    """One destroy event as the kernel sends it: nlmsghdr, inet_diag_msg, INET_DIAG_PROTOCOL, INET_DIAG_INFO."""
    width = 4 if family == socket.AF_INET else 16
    addresses = [socket.inet_pton(family, a).ljust(16, b"\0")[:16] for a in (src, dst)]
    assert all(len(a) == 16 for a in addresses) and width
    body = struct.pack("=BBBB", family, 7, 0, 0) + struct.pack(">HH", sport, dport)
    body += addresses[0] + addresses[1] + bytes(16) + struct.pack("=IIII", 0, 0, 0, 0)
    body += struct.pack("=HHB3x", 5, events.INET_DIAG_PROTOCOL, protocol)
    if info is not None:
        body += struct.pack("=HH", 4 + len(info), events.INET_DIAG_INFO) + info
    return struct.pack("=IHHII", 16 + len(body), 20, 0, 0, 0) + body


def tcp_info(sent: int, received: int) -> bytes:
    return bytes(events.TCP_BYTES_AT) + events.TCP_BYTES.pack(sent, received) + bytes(8)


def test_events_parse_tcp_and_udp_and_skip_sockets_without_a_peer() -> None:
    data = (
        event(socket.AF_INET, 41000, 443, "10.0.0.1", "10.0.0.2", socket.IPPROTO_TCP, tcp_info(500, 3000))
        + event(socket.AF_INET6, 53000, 53, "fd00::1", "fd00::2", socket.IPPROTO_UDP, b"")
        + event(socket.AF_INET, 8080, 0, "0.0.0.0", "0.0.0.0", socket.IPPROTO_TCP, tcp_info(0, 0))
    )
    assert events.parse(data, NS) == [
        events.Closed(NS, Proto.TCP, "10.0.0.1", 41000, "10.0.0.2", 443, 500, 3000),
        events.Closed(NS, Proto.UDP, "fd00::1", 53000, "fd00::2", 53, None, None),
    ]


@pytest.mark.parametrize("cut", [4, 20, 60, 95])
def test_a_truncated_event_is_a_parse_error(cut: int) -> None:
    data = event(socket.AF_INET, 41000, 443, "10.0.0.1", "10.0.0.2", socket.IPPROTO_TCP, tcp_info(1, 2))
    with pytest.raises(ParseError):
        events.parse(data[:cut], NS)


def test_an_attribute_that_overruns_its_event_is_a_parse_error() -> None:
    data = bytearray(event(socket.AF_INET, 41000, 443, "10.0.0.1", "10.0.0.2", socket.IPPROTO_TCP, None))
    struct.pack_into("=H", data, 16 + 72, 200)  # the protocol attribute claims 200 bytes
    with pytest.raises(ParseError):
        events.parse(bytes(data), NS)


@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        events.parse(data, NS)


# The listener on real connections.


@pytest.fixture
def watching() -> Iterator[tuple[Events, Scanner]]:
    listener = Events()
    scanner = Scanner(scope="current")
    try:
        listener.watch([current_namespace()])
        yield listener, scanner
    finally:
        listener.close()


def scan_between(listener: Events, scanner: Scanner) -> None:
    """A scan as the agent runs one: hold the events, read the sockets, learn them."""
    listener.hold()
    listener.learn(scanner.snapshot())


def settle(listener: Events) -> Closings:
    time.sleep(0.3)  # the reading thread folds what the kernel already sent
    return listener.take()


def flows_of(taken: Closings, port: int, role: str) -> list[events.Counts]:
    index = 5 if role == SERVED else 7  # the port kept: the server's own, or the one called
    return [counts for key, counts in taken.flows.items() if key[2] == role and key[index] == port]


@ROOT_ONLY
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_short_tcp_connections_are_counted_with_their_bytes(watching: tuple[Events, Scanner], family: int) -> None:
    listener, scanner = watching
    server = socket.create_server(("127.0.0.1" if family == socket.AF_INET else "::1", 0), family=family)
    scan_between(listener, scanner)  # the scan sees the listener, none of the connections
    listener.take()
    count, request, answer = 25, 10_000, 20_000
    port = exchange(server, count, request, answer)
    taken = settle(listener)
    assert taken.lost == 0
    served, calling = flows_of(taken, port, SERVED), flows_of(taken, port, CALLING)
    assert [c.connections for c in served] == [count]
    assert [c.short_lived for c in served] == [count]  # the scan before saw none of them
    assert [c.connections for c in calling] == [count]
    assert served[0].sent == pytest.approx(count * answer, rel=0.01)
    assert served[0].received == pytest.approx(count * request, rel=0.01)
    assert calling[0].sent == pytest.approx(count * request, rel=0.01)
    assert calling[0].received == pytest.approx(count * answer, rel=0.01)


@ROOT_ONLY
def test_a_connection_a_scan_saw_is_not_short_lived(watching: tuple[Events, Scanner]) -> None:
    listener, scanner = watching
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        scan_between(listener, scanner)
        listener.take()
    finally:
        client.close()
        accepted.close()
        server.close()
    served = flows_of(settle(listener), port, SERVED)
    assert [(c.connections, c.short_lived) for c in served] == [(1, 0)]


@ROOT_ONLY
def test_a_connection_the_scan_before_saw_is_not_short_lived_when_its_event_comes_late(
    watching: tuple[Events, Scanner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection closes just before a scan, and the events reader (busy, or letting events gather) folds its
    destroy event only after that scan: the scan no longer sees it, the one before did.  It was counted as a
    connection no scan saw, and so twice over a window (once from its socket rows)."""
    listener, scanner = watching
    monkeypatch.setattr(events, "BATCH", 1.0)  # the reader folds a batch of events a second after its first
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        scan_between(listener, scanner)  # sees the connection
        listener.take()
    finally:
        client.close()
        accepted.close()
        server.close()
    time.sleep(0.1)  # both ends are destroyed; their events wait in the reader's batch
    scan_between(listener, scanner)  # the next scan, before the reader folds them
    time.sleep(2.5)  # the reader's batch under way when the events came, then theirs
    served = flows_of(listener.take(), port, SERVED)
    assert [(c.connections, c.short_lived) for c in served] == [(1, 0)]


@ROOT_ONLY
def test_connected_udp_is_counted_without_bytes(watching: tuple[Events, Scanner]) -> None:
    listener, scanner = watching
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        scan_between(listener, scanner)  # the scan sees the unconnected server: a listener
        listener.take()
        for _ in range(5):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.connect(("127.0.0.1", port))
                client.send(b"query")
                server.recv(64)
        taken = settle(listener)
    finally:
        server.close()
    calling = flows_of(taken, port, CALLING)
    assert [(c.connections, c.short_lived, c.bytes_known) for c in calling] == [(5, 5, False)]


@ROOT_ONLY
def test_a_kernel_that_drops_events_is_reported_and_counts_stay_a_lower_bound() -> None:
    listener = Events()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 4)
    try:
        sock.bind((0, events.GROUPS))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's smallest buffer
        count = 300
        port = exchange(socket.create_server(("127.0.0.1", 0)), count, 100, 100)  # nothing reads meanwhile
        # The kernel sends destroy events from a work queue of its own, after the sockets are gone: on a busy
        # machine some come later.  Read until it reports a drop (or for 10 s, which fails below).
        deadline = time.monotonic() + 10
        while True:
            listener._drain(current_namespace().inode, sock)
            with listener.lock:
                dropped = listener.current.lost
            if dropped or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        taken = listener.take()
    finally:
        sock.close()
        listener.close()
    assert taken.lost >= 1
    served = sum(c.connections for c in flows_of(taken, port, SERVED))
    calling = sum(c.connections for c in flows_of(taken, port, CALLING))
    assert served < count and calling <= count  # some were dropped; none invented


@ROOT_ONLY
def test_a_namespace_whose_events_cannot_be_joined_is_reported_unseen() -> None:
    """Without CAP_SYS_ADMIN and CAP_NET_ADMIN the agent cannot join another namespace's events: it says so
    in the coverage and goes on.  (This kernel lets any user join the events of its own namespace.)"""
    name = f"sf-ev-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    script = (
        "import os\n"
        "from sockfleet.agent.events import Events\n"
        "from sockfleet.agent.records import Namespace\n"
        f"path = '/run/netns/{name}'\n"
        "e = Events(); e.watch([Namespace(os.stat(path).st_ino, path, None, False)])\n"
        "print(e.take().unseen); e.close()\n"
    )
    dropped = "-sys_admin,-net_admin"
    try:
        result = subprocess.run(
            ["setpriv", f"--bounding-set={dropped}", f"--inh-caps={dropped}", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert result.returncode == 0, result.stderr
    assert "connections between scans not seen" in result.stdout
    assert "not permitted" in result.stdout


@ROOT_ONLY
def test_events_in_another_namespace_carry_its_inode() -> None:
    name = f"sf-ev-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    listener = Events()
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        inode = os.stat(f"/run/netns/{name}").st_ino
        listener.watch([Namespace(inode, f"/run/netns/{name}", None, False, name)])
        script = (
            "import socket\n"
            "s = socket.create_server(('127.0.0.1', 7070))\n"
            "for _ in range(3):\n"
            "    c = socket.create_connection(('127.0.0.1', 7070)); a, _ = s.accept(); c.close(); a.close()\n"
        )
        subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", script], check=True, timeout=60)
        taken = settle(listener)
    finally:
        listener.close()
        subprocess.run(["ip", "netns", "del", name], check=False)
    mine = {key: counts.connections for key, counts in taken.flows.items() if key[0] == inode}
    assert sum(mine.values()) == 6  # three connections, both ends in the namespace
    assert taken.unseen == {}


def pump(a: socket.socket, b: socket.socket, size: int) -> None:
    """``size`` bytes from ``a`` to ``b``, all read."""
    a.sendall(b"p" * size)
    got = 0
    while got < size:
        got += len(b.recv(65536))


@ROOT_ONLY
def test_bytes_of_a_long_lived_connection_are_counted_once_per_interval(watching: tuple[Events, Scanner]) -> None:
    """A connection open across scans: each scan counts what it moved since the previous one, and its
    close counts only what it moved after the last scan, so the intervals add up to what it sent."""
    listener, scanner = watching
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        scan_between(listener, scanner)  # the baseline: what the connection moved so far
        listener.take()
        pump(client, accepted, 50_000)
        pump(accepted, client, 80_000)
        scan_between(listener, scanner)
        first = flows_of(listener.take(), port, SERVED)
        pump(client, accepted, 20_000)
    finally:
        client.close()
        accepted.close()
        server.close()
    last = flows_of(settle(listener), port, SERVED)
    assert [(c.connections, c.received, c.sent) for c in first] == [(0, 50_000, 80_000)]  # still open
    assert [(c.connections, c.short_lived) for c in last] == [(1, 0)]
    assert last[0].received == pytest.approx(20_000, abs=2)  # the close adds the FIN
    assert last[0].sent == pytest.approx(0, abs=2)
