"""Source parsers on fixture bytes and text: exact records, and a clear error for bad input."""

from __future__ import annotations

import contextlib
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockfleet.agent.errors import ParseError, SourceError
from sockfleet.agent.records import Family, Proto, SockType, State
from sockfleet.agent.sources import netlink, procfs
from tests.agent.tables import TCP6_TABLE, TCP_TABLE, UNIX_TABLE

NS = 4026531840


def nlmsg(kind: int, payload: bytes) -> bytes:
    body = netlink.NLMSGHDR.pack(netlink.NLMSGHDR.size + len(payload), kind, 2, 1, 0) + payload
    return body + b"\0" * (-len(body) % 4)


def inet_msg(family: int, state: int, sport: int, dport: int, src: str, dst: str, inode: int, uid: int = 1000) -> bytes:
    size = 4 if family == socket.AF_INET else 16
    raw_src = socket.inet_pton(family, src).ljust(16, b"\0")
    raw_dst = socket.inet_pton(family, dst).ljust(16, b"\0")
    assert len(raw_src) == 16 and size
    head = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, dport) + raw_src + raw_dst
    tail = struct.pack("=I8sIIIII", 0, b"\0" * 8, 0, 3, 7, uid, inode)
    shutdown_attr = struct.pack("=HHB3x", 5, 8, 0)  # INET_DIAG_SHUTDOWN, as the kernel always adds
    return nlmsg(netlink.SOCK_DIAG_BY_FAMILY, head + tail + shutdown_attr)


def rtattr(kind: int, value: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(value), kind) + value
    return body + b"\0" * (-len(body) % 4)


def unix_msg(kind: int, state: int, inode: int, name: bytes | None = None, peer: int | None = None) -> bytes:
    payload = struct.pack("=BBBxI8x", socket.AF_UNIX, kind, state, inode)
    if name is not None:
        payload += rtattr(netlink.UNIX_DIAG_NAME, name)
    if peer is not None:
        payload += rtattr(netlink.UNIX_DIAG_PEER, struct.pack("=I", peer))
    payload += rtattr(netlink.UNIX_DIAG_RQLEN, struct.pack("=II", 1, 2))
    payload += rtattr(netlink.UNIX_DIAG_UID, struct.pack("=I", 1000))
    return nlmsg(netlink.SOCK_DIAG_BY_FAMILY, payload)


DONE = nlmsg(netlink.NLMSG_DONE, struct.pack("=i", 0))
INET_DUMP = (
    inet_msg(socket.AF_INET, 10, 8080, 0, "127.0.0.1", "0.0.0.0", 42)
    + inet_msg(socket.AF_INET6, 1, 443, 51000, "::ffff:10.0.0.5", "::ffff:10.0.0.6", 43)
    + DONE
)
UNIX_DUMP = (
    unix_msg(1, 10, 50, b"/run/app.sock\0")
    + unix_msg(2, 7, 51, b"\0abstract\0name")
    + unix_msg(5, 1, 52, None, peer=53)
    + DONE
)


def test_inet_dump_bytes() -> None:
    listen, mapped = netlink.parse_inet([INET_DUMP], NS, Proto.TCP)
    assert listen == (
        NS,
        Proto.TCP,
        Family.INET,
        SockType.STREAM,
        State.LISTEN,
        "127.0.0.1",
        8080,
        None,
        None,
        None,
        None,
        42,
        1000,
        3,
        7,
    )
    assert (mapped.family, mapped.local_address, mapped.remote_address, mapped.remote_port) == (
        Family.INET6,
        "::ffff:10.0.0.5",
        "::ffff:10.0.0.6",
        51000,
    )
    assert mapped.state is State.ESTABLISHED


def test_udp_states() -> None:
    dump = (
        inet_msg(socket.AF_INET, 7, 53, 0, "0.0.0.0", "0.0.0.0", 1)
        + inet_msg(socket.AF_INET, 1, 5000, 53, "127.0.0.1", "127.0.0.53", 2)
        + DONE
    )
    bound, connected = netlink.parse_inet([dump], NS, Proto.UDP)
    assert (bound.type, bound.state, bound.remote_address) == (SockType.DGRAM, State.UNCONN, None)
    assert (connected.state, connected.remote_port) == (State.ESTABLISHED, 53)


def test_unix_dump_bytes() -> None:
    listen, abstract, seq = netlink.parse_unix([UNIX_DUMP], NS)
    assert (listen.type, listen.state, listen.path, listen.inode) == (
        SockType.STREAM,
        State.LISTEN,
        "/run/app.sock",
        50,
    )
    assert (listen.rx_queue, listen.tx_queue, listen.uid) == (1, 2, 1000)
    assert (abstract.type, abstract.state, abstract.path) == (SockType.DGRAM, State.UNCONN, "@abstract@name")
    assert (seq.type, seq.state, seq.path, seq.peer_inode) == (SockType.SEQPACKET, State.ESTABLISHED, None, 53)


def test_dump_split_over_datagrams() -> None:
    first, second = INET_DUMP[: -len(DONE)], DONE
    assert len(netlink.parse_inet([first, second], NS, Proto.TCP)) == 2


def test_kernel_error_names_the_source() -> None:
    error = nlmsg(netlink.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16)
    with pytest.raises(SourceError, match=r"^netlink: kernel refused the dump: errno 1$"):
        netlink.parse_inet([error], NS, Proto.TCP)


@pytest.mark.parametrize("cut", [3, 17, 40, 100])
def test_truncated_inet_dump_is_a_parse_error(cut: int) -> None:
    with pytest.raises(ParseError, match=r"^netlink: "):
        netlink.parse_inet([INET_DUMP[:cut]], NS, Proto.TCP)


def test_bad_attribute_length_is_a_parse_error() -> None:
    payload = struct.pack("=BBBxI8x", socket.AF_UNIX, 1, 10, 9) + struct.pack("=HH", 200, 0)
    with pytest.raises(ParseError, match="overruns"):
        netlink.parse_unix([nlmsg(netlink.SOCK_DIAG_BY_FAMILY, payload) + DONE], NS)


def test_unknown_unix_type_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="unknown unix socket type 9"):
        netlink.parse_unix([unix_msg(9, 7, 1) + DONE], NS)


@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(SourceError):
        netlink.parse_inet([data], NS, Proto.TCP)
    with contextlib.suppress(SourceError):
        netlink.parse_unix([data], NS)


@given(st.integers(min_value=0, max_value=len(INET_DUMP + UNIX_DUMP)), st.binary(min_size=1, max_size=8))
def test_corrupted_dumps_never_crash(offset: int, garbage: bytes) -> None:
    inet = INET_DUMP[:offset] + garbage + INET_DUMP[offset + len(garbage) :]
    unix = UNIX_DUMP[:offset] + garbage + UNIX_DUMP[offset + len(garbage) :]
    with contextlib.suppress(SourceError):
        netlink.parse_inet([inet], NS, Proto.TCP)
    with contextlib.suppress(SourceError):
        netlink.parse_unix([unix], NS)


def test_proc_tcp_text() -> None:
    listen, connected = procfs.parse_inet(TCP_TABLE, NS, Proto.TCP, Family.INET)
    assert listen == (
        NS,
        Proto.TCP,
        Family.INET,
        SockType.STREAM,
        State.LISTEN,
        "127.0.0.1",
        8080,
        None,
        None,
        None,
        None,
        4242,
        1000,
        2,
        0,
    )
    assert (connected.state, connected.remote_address, connected.remote_port, connected.tx_queue) == (
        State.ESTABLISHED,
        "127.0.0.1",
        50000,
        16,
    )


def test_proc_tcp6_text() -> None:
    ssh, time_wait = procfs.parse_inet(TCP6_TABLE, NS, Proto.TCP, Family.INET6)
    assert (ssh.local_address, ssh.local_port, ssh.remote_address) == ("::1", 22, None)
    assert (time_wait.state, time_wait.local_address, time_wait.inode) == (State.TIME_WAIT, "::ffff:127.0.0.1", 0)


def test_proc_unix_text() -> None:
    listen, abstract, seq = procfs.parse_unix(UNIX_TABLE, NS)
    assert (listen.state, listen.path, listen.type) == (State.LISTEN, "/run/app space.sock", SockType.STREAM)
    assert (abstract.state, abstract.path, abstract.type) == (State.UNCONN, "@abstract", SockType.DGRAM)
    assert (seq.state, seq.path, seq.type, seq.peer_inode) == (State.ESTABLISHED, None, SockType.SEQPACKET, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "tcp: missing header line"),
        (TCP_TABLE.splitlines()[0] + "\n   0: 0100007F:1F90\n", "tcp line 2: list index out of range"),
        (
            TCP_TABLE.splitlines()[0] + "\n   0: 0100007:1F90 00000000:0000 0A 0:0 0 0 0 0 1\n",
            "tcp line 2: IPv4 address '0100007' is not 8 hex digits",
        ),
        (
            TCP_TABLE.splitlines()[0] + "\n   0: 0100007F:1F90 00000000:0000 ZZ 0:0 0 0 0 0 1\n",
            "tcp line 2: invalid literal for int() with base 16: 'ZZ'",
        ),
    ],
)
def test_malformed_proc_text_names_source_and_line(text: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        procfs.parse_inet(text, NS, Proto.TCP, Family.INET, "tcp")
    assert str(caught.value) == f"procfs: {message}"


def test_malformed_unix_line() -> None:
    with pytest.raises(ParseError, match=r"^procfs: unix line 2: "):
        procfs.parse_unix(UNIX_TABLE.splitlines()[0] + "\n0000: 2 0 0 0009 01 5\n", NS)


@given(st.text(max_size=300))
def test_random_proc_text_never_crashes(text: str) -> None:
    with contextlib.suppress(ParseError):
        procfs.parse_inet(text, NS, Proto.UDP, Family.INET6)
    with contextlib.suppress(ParseError):
        procfs.parse_unix(text, NS)
