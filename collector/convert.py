"""Wire messages to plain rows: the one place the collector touches protobuf types.

Every field is checked here, so that nothing malformed reaches the store: an
enum out of range, a port above 65535, an address that does not parse for its
family, an oversized string, a timestamp that is not plausible.  A bad field
raises ``RejectedMessage`` naming it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.errors import RejectedMessage
from sockfleet.v1 import fleet_pb2 as pb

PROTOS: dict[int, str] = {pb.PROTO_TCP: "tcp", pb.PROTO_UDP: "udp", pb.PROTO_UNIX: "unix"}
FAMILIES: dict[int, str] = {pb.FAMILY_INET: "inet", pb.FAMILY_INET6: "inet6", pb.FAMILY_UNIX: "unix"}
TYPES: dict[int, str] = {
    pb.SOCK_TYPE_STREAM: "stream", pb.SOCK_TYPE_DGRAM: "dgram", pb.SOCK_TYPE_SEQPACKET: "seqpacket",
}
STATES = {number: name.removeprefix("STATE_") for name, number in pb.State.items() if number}
MAX_TEXT = 4096  # cmdline and path; names are shorter
MAX_NAME = 255
EARLIEST = datetime(2000, 1, 1)


def utc(us: int) -> datetime:
    """Microseconds since the epoch → naive UTC datetime, as stored."""
    return datetime(1970, 1, 1) + timedelta(microseconds=us)


def convert_time(us: int) -> str:
    """A gap's bound for the coverage document: RFC 3339, or the raw number when it is not a plausible time."""
    try:
        return utc(us).isoformat() + "Z"
    except OverflowError:
        return str(us)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def taken_at(us: int, field: str) -> datetime:
    try:
        moment = utc(us)
    except OverflowError:
        moment = EARLIEST - timedelta(days=1)
    if moment < EARLIEST or moment > now() + timedelta(days=1):
        raise RejectedMessage(f"{field}: {us} µs since the epoch is not a plausible time")
    return moment


# Column order of ``SocketRow.values``: identity, versioned, volatile (see collector.schema.sockets).
IDENTITY_COLUMNS = ("netns", "proto", "family", "type", "inode", "local_address", "local_port",
                    "remote_address", "remote_port", "path")
VERSIONED_COLUMNS = ("state", "peer_inode", "uid", "user", "pid", "process", "cmdline", "owners")
VOLATILE_COLUMNS = ("rx_queue", "tx_queue")
ROW_COLUMNS = ("key", *IDENTITY_COLUMNS, *VERSIONED_COLUMNS, *VOLATILE_COLUMNS)


@dataclass(frozen=True, slots=True)
class SocketRow:
    """One socket as stored: digest ``key``, identity, versioned and volatile attributes, in ``ROW_COLUMNS`` order."""

    key: str
    identity: tuple[Any, ...]
    versioned: tuple[Any, ...]
    volatile: tuple[int, int]

    def values(self) -> tuple[Any, ...]:
        return (self.key, *self.identity, *self.versioned, *self.volatile)


def _text(value: str, field: str, limit: int = MAX_NAME) -> str | None:
    if len(value) > limit:
        raise RejectedMessage(f"{field}: {len(value)} characters, more than {limit}")
    return value or None


def _enum(table: dict[int, str], value: int, field: str) -> str:
    name = table.get(value)
    if name is None:
        raise RejectedMessage(f"{field}: {value} is not a known value")
    return name


_VERSIONS: dict[str, int] = {}  # address text -> IP version, for addresses already seen valid


def _address(value: str, family: str, field: str) -> str | None:
    if not value:
        return None
    version = _VERSIONS.get(value)
    if version is None:
        if len(value) > 45:
            raise RejectedMessage(f"{field}: {len(value)} characters is too long for an IP address")
        try:
            version = ipaddress.ip_address(value).version
        except ValueError:
            raise RejectedMessage(f"{field}: {value!r} is not an IP address") from None
        if len(_VERSIONS) > 100_000:
            _VERSIONS.clear()
        _VERSIONS[value] = version
    if (family == "inet") != (version == 4):
        raise RejectedMessage(f"{field}: {value!r} is not an {family} address")
    return value


MAX_BIGINT = 2**63 - 1  # the largest value the database's BIGINT columns hold


def _bigint(value: int, field: str) -> int:
    if value > MAX_BIGINT:
        raise RejectedMessage(f"{field}: {value} is larger than {MAX_BIGINT}")
    return value


def _port(value: int, field: str) -> int:
    if not 0 <= value <= 65535:
        raise RejectedMessage(f"{field}: {value} is not a port (0-65535)")
    return value


def key_row(key: pb.SocketKey, where: str = "socket") -> tuple[str, tuple[Any, ...]]:
    """The digest and identity columns (``IDENTITY_COLUMNS`` order) of one socket key."""
    if key.netns > MAX_BIGINT or key.inode > MAX_BIGINT:
        _bigint(key.netns, f"{where}.key.netns")
        _bigint(key.inode, f"{where}.key.inode")
    proto = _enum(PROTOS, key.proto, f"{where}.key.proto")
    family = _enum(FAMILIES, key.family, f"{where}.key.family")
    kind = _enum(TYPES, key.type, f"{where}.key.type")
    if (proto == "unix") != (family == "unix"):
        raise RejectedMessage(f"{where}.key: proto {proto} does not go with family {family}")
    if proto == "unix":
        if key.local_address or key.remote_address or key.local_port or key.remote_port:
            raise RejectedMessage(f"{where}.key: a unix socket has no addresses or ports")
        identity: tuple[Any, ...] = (
            key.netns, proto, family, kind, key.inode or None, None, None, None, None,
            _text(key.path, f"{where}.key.path", MAX_TEXT),
        )
    else:
        if key.path:
            raise RejectedMessage(f"{where}.key.path: an {proto} socket has no path")
        remote = _address(key.remote_address, family, f"{where}.key.remote_address")
        identity = (
            key.netns, proto, family, kind, key.inode or None,
            _address(key.local_address, family, f"{where}.key.local_address"),
            _port(key.local_port, f"{where}.key.local_port"),
            remote, _port(key.remote_port, f"{where}.key.remote_port") if remote else None, None,
        )
    return key_digest(key), identity


def key_digest(key: pb.SocketKey) -> str:
    """Deterministic serialization of the key: the same socket always gets the same digest."""
    return hashlib.blake2b(key.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def stored_versioned(sock: pb.Socket) -> tuple[Any, ...]:
    """The versioned attributes as ``socket_row`` stores them, unchecked: equal to a stored row means valid."""
    return (
        STATES.get(sock.state), sock.peer_inode or None, sock.uid if sock.HasField("uid") else None,
        sock.user or None, sock.pid if sock.HasField("pid") else None, sock.process or None, sock.cmdline or None,
        sock.owners,
    )


def socket_row(sock: pb.Socket, where: str = "socket") -> SocketRow:
    """One socket's row; the common case (known state, short names) takes no function calls."""
    key, identity = key_row(sock.key, where)
    state = STATES.get(sock.state)
    if state is None:
        raise RejectedMessage(f"{where}.state: {sock.state} is not a known value")
    if sock.peer_inode > MAX_BIGINT:
        _bigint(sock.peer_inode, f"{where}.peer_inode")
    user, process, cmdline = sock.user, sock.process, sock.cmdline
    if len(user) > MAX_NAME or len(process) > MAX_NAME or len(cmdline) > MAX_TEXT:
        _text(user, f"{where}.user")
        _text(process, f"{where}.process")
        _text(cmdline, f"{where}.cmdline", MAX_TEXT)
    versioned = (
        state, sock.peer_inode or None, sock.uid if sock.HasField("uid") else None, user or None,
        sock.pid if sock.HasField("pid") else None, process or None, cmdline or None, sock.owners,
    )
    return SocketRow(key, identity, versioned, (sock.rx_queue, sock.tx_queue))


def coverage_json(cov: pb.Coverage) -> tuple[str, bool]:
    """Coverage as stored (JSON) and whether the scan saw everything."""
    sources = [
        {"source": _text(s.source, "coverage.source"), "netns": s.netns, "ok": s.ok,
         "seconds": s.duration_us / 1e6, "records": s.records, "error": s.error or None}
        for s in cov.sources
    ]
    unscanned = [[u.netns, u.reason] for u in cov.namespaces_unscanned]
    gaps = [{"from": convert_time(g.from_us), "to": convert_time(g.to_us), "reason": _text(g.reason, "coverage.gap")}
            for g in cov.gaps]
    document = {
        "sources": sources, "namespaces_scanned": list(cov.namespaces_scanned),
        "namespaces_unscanned": unscanned, "processes_unreadable": list(cov.processes_unreadable), "gaps": gaps,
    }
    complete = all(s["ok"] for s in sources) and not unscanned and not cov.processes_unreadable and not gaps
    return json.dumps(document), complete


def hello_fields(hello: pb.Hello) -> dict[str, Any]:
    if not hello.host_id:
        raise RejectedMessage("hello.host_id: empty")
    addresses = []
    for index, item in enumerate(hello.addresses):
        address = _address(item.address, "inet6" if ":" in item.address else "inet", f"hello.addresses[{index}]")
        netns = _bigint(item.netns, f"hello.addresses[{index}].netns")
        interface = _text(item.interface, f"hello.addresses[{index}].interface") or ""
        addresses.append((netns, interface, address))
    return {
        "host_id": _text(hello.host_id, "hello.host_id"),
        "name": _text(hello.host_name, "hello.host_name") or hello.host_id,
        "agent_version": _text(hello.agent_version, "hello.agent_version", 64) or "",
        "boot_id": _text(hello.boot_id, "hello.boot_id", 64) or "",
        "interval_seconds": min(max(hello.interval_seconds, 1), 86400),
        "addresses": sorted(set(addresses)),
    }
