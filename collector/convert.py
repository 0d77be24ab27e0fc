"""Wire messages to plain rows: the one place past the gRPC service where the collector touches protobuf types.

``greeting`` turns a Hello into a ``Greeting``; ``scan`` turns a Snapshot (or the parts of one) or a
Delta into a ``Scan``, which the store applies.  A scan's header fields are checked at once; its sockets
when the store writes them (``Listing``, ``Changes``): a snapshot's socket whose stored row is unchanged
needs neither checking nor converting, which is most of them.

Every field is checked here against the bounds of ``sockfleet.v1.limits``, so that nothing malformed
reaches the store and the same message gets the same answer on SQLite and PostgreSQL: an enum out of
range, a port above 65535, a pid beyond the kernel's, an address that does not parse for its family, a
string that is empty where it must not be, too long, or holds a NUL character, a list too long, a time
that is not plausible.  A bad field raises ``RejectedMessage`` naming it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, TypeAlias

from sockfleet.collector.errors import RejectedMessage
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import limits
from sockfleet.v1.limits import MAX_BIGINT, MAX_NAME, MAX_PID, MAX_SHORT, MAX_TEXT

PROTOS: dict[int, str] = {pb.PROTO_TCP: "tcp", pb.PROTO_UDP: "udp", pb.PROTO_UNIX: "unix"}
FAMILIES: dict[int, str] = {pb.FAMILY_INET: "inet", pb.FAMILY_INET6: "inet6", pb.FAMILY_UNIX: "unix"}
TYPES: dict[int, str] = {
    pb.SOCK_TYPE_STREAM: "stream",
    pb.SOCK_TYPE_DGRAM: "dgram",
    pb.SOCK_TYPE_SEQPACKET: "seqpacket",
}
STATES = {number: name.removeprefix("STATE_") for name, number in pb.State.items() if number}
Address: TypeAlias = tuple[int, str, str]  # (netns, interface, address)
EARLIEST = datetime(2000, 1, 1)
DEFAULT_SKEW = timedelta(minutes=2)


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


def taken_at(us: int, field: str, skew: timedelta = DEFAULT_SKEW, received: datetime | None = None) -> datetime:
    """A scan time: not before 2000, and not more than ``skew`` ahead of the collector's clock."""
    try:
        moment = utc(us)
    except OverflowError:
        raise RejectedMessage(f"{field}: {us} µs since the epoch is not a plausible time") from None
    if moment < EARLIEST:
        raise RejectedMessage(f"{field}: {us} µs since the epoch is not a plausible time")
    ahead = (moment - (received or now())).total_seconds()
    if ahead > skew.total_seconds():
        raise RejectedMessage(
            f"{field}: the scan is dated {_seconds(ahead)} ahead of the collector's clock "
            f"(tolerance {_seconds(skew.total_seconds())}); is the host's clock right?"
        )
    return moment


def _seconds(value: float) -> str:
    return f"{value:,.0f} s" if abs(value) >= 10 else f"{value:.1f} s"


# Column order of ``SocketRow.values``: identity, versioned, volatile (see collector.schema.sockets).
IDENTITY_COLUMNS = (
    "netns",
    "proto",
    "family",
    "type",
    "inode",
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "path",
)
VERSIONED_COLUMNS = ("state", "peer_inode", "uid", "user", "pid", "process", "cmdline", "owners")
VOLATILE_COLUMNS = ("rx_queue", "tx_queue")
ROW_COLUMNS = ("key", *IDENTITY_COLUMNS, *VERSIONED_COLUMNS, *VOLATILE_COLUMNS)


class SocketRow:
    """One socket as stored: its ``values`` in ``ROW_COLUMNS`` order (digest ``key``, identity, versioned and
    volatile attributes)."""

    __slots__ = ("key", "values")

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.key: str = values[0]
        self.values = values

    @property
    def identity(self) -> tuple[Any, ...]:
        return self.values[1 : 1 + len(IDENTITY_COLUMNS)]

    @property
    def versioned(self) -> tuple[Any, ...]:
        return self.values[1 + len(IDENTITY_COLUMNS) : 1 + len(IDENTITY_COLUMNS) + len(VERSIONED_COLUMNS)]


def text(value: str, field: str, limit: int = MAX_NAME, required: bool = False) -> str | None:
    """A string field as stored (None when empty), or a refusal naming the field."""
    if len(value) > limit:
        raise RejectedMessage(f"{field}: {len(value)} characters, more than {limit}")
    if "\x00" in value:
        raise RejectedMessage(f"{field}: holds a NUL character")
    if required and not value:
        raise RejectedMessage(f"{field}: empty")
    return value or None


def _enum(table: dict[int, str], value: int, field: str) -> str:
    name = table.get(value)
    if name is None:
        raise RejectedMessage(f"{field}: {value} is not a known value")
    return name


def _many(items: Any, limit: int, field: str) -> Any:
    if len(items) > limit:
        raise RejectedMessage(f"{field}: {len(items):,} entries, more than {limit:,}")
    return items


_VERSIONS: dict[str, int] = {}  # address text -> IP version, for addresses already seen valid


def address_version(value: str, field: str) -> int:
    """4 or 6 for an IP address in text, or a refusal naming the field."""
    version = _VERSIONS.get(value)
    if version is None:
        if len(value) > limits.MAX_ADDRESS:
            raise RejectedMessage(f"{field}: {len(value)} characters is too long for an IP address")
        try:
            version = ipaddress.ip_address(value).version
        except ValueError:
            raise RejectedMessage(f"{field}: {value!r} is not an IP address") from None
        if "%" in value:
            raise RejectedMessage(f"{field}: {value!r} carries a scope (%...); addresses are stored without one")
        if len(_VERSIONS) > 100_000:
            _VERSIONS.clear()
        _VERSIONS[value] = version
    return version


_FAMILY_VERSION = {"inet": 4, "inet6": 6}  # the IP version of an internet family's addresses


def _address(value: str, family: str, field: str) -> str | None:
    if not value:
        return None
    if (family == "inet") != (address_version(value, field) == 4):
        raise RejectedMessage(f"{field}: {value!r} is not an {family} address")
    return value


def _number(value: int, field: str, limit: int = MAX_BIGINT) -> int:
    if value > limit:
        raise RejectedMessage(f"{field}: {value} is larger than {limit}")
    return value


def _port(value: int, field: str) -> int:
    if not 0 <= value <= 65535:
        raise RejectedMessage(f"{field}: {value} is not a port (0-65535)")
    return value


# A key's fields as ``key_digest`` joins them, read from the message in one call.
_KEY_FIELDS: Callable[[pb.SocketKey], tuple[Any, ...]] = attrgetter(
    "netns", "proto", "family", "type", "inode", "local_address", "local_port", "remote_address", "remote_port", "path"
)
_KEY_TEXT = "\x1f".join(["%s"] * 10)


def key_row(key: pb.SocketKey, where: str = "socket", digest: str | None = None) -> tuple[Any, ...]:
    """The digest and identity columns (``IDENTITY_COLUMNS`` order) of one socket key, as one tuple
    (``digest``: its ``key_digest``, when already made)."""
    fields = _KEY_FIELDS(key)
    netns, proto_number, family_number, type_number, inode = fields[:5]
    if netns > MAX_BIGINT or inode > MAX_BIGINT:
        _number(netns, f"{where}.key.netns")
        _number(inode, f"{where}.key.inode")
    proto, family, kind = PROTOS.get(proto_number), FAMILIES.get(family_number), TYPES.get(type_number)
    if proto is None or family is None or kind is None:  # the refusal names the first unknown field
        proto = _enum(PROTOS, proto_number, f"{where}.key.proto")
        family = _enum(FAMILIES, family_number, f"{where}.key.family")
        kind = _enum(TYPES, type_number, f"{where}.key.type")
    if (proto == "unix") != (family == "unix"):
        raise RejectedMessage(f"{where}.key: proto {proto} does not go with family {family}")
    columns = _unix_columns(fields, where) if proto == "unix" else _inet_columns(fields, proto, family, where)
    return (digest or _digest(fields), netns, proto, family, kind, inode or None, *columns)


def _unix_columns(fields: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    """Address, ports and path of a Unix socket's key (``_KEY_FIELDS``): only the path."""
    _, _, _, _, _, local, local_port, remote, remote_port, path = fields
    if local or remote or local_port or remote_port:
        raise RejectedMessage(f"{where}.key: a unix socket has no addresses or ports")
    return (None, None, None, None, text(path, f"{where}.key.path", MAX_TEXT))


def _inet_columns(fields: tuple[Any, ...], proto: str, family: str, where: str) -> tuple[Any, ...]:
    """Address, ports and path of an internet socket's key (``_KEY_FIELDS``): no path, and a remote port only
    with an address."""
    _, _, _, _, _, local, local_port, remote, remote_port, path = fields
    if path:
        raise RejectedMessage(f"{where}.key.path: an {proto} socket has no path")
    # Field names are made for a refusal only: the common socket passes without formatting any.
    if remote and _VERSIONS.get(remote) != _FAMILY_VERSION[family]:
        _address(remote, family, f"{where}.key.remote_address")
    if not remote and remote_port:
        raise RejectedMessage(f"{where}.key.remote_port: a port without a remote address")
    if local and _VERSIONS.get(local) != _FAMILY_VERSION[family]:
        _address(local, family, f"{where}.key.local_address")
    if not 0 <= local_port <= 65535:
        _port(local_port, f"{where}.key.local_port")
    if remote and not 0 <= remote_port <= 65535:
        _port(remote_port, f"{where}.key.remote_port")
    return (local or None, local_port, remote or None, remote_port if remote else None, None)


def key_digest(key: pb.SocketKey) -> str:
    """The socket's identity as one short text: the same socket always gets the same digest.

    Made from the key's known fields only, by value, so that fields a newer agent adds to the key never
    make one socket look like two.  Migration 0011 made the digests of stored rows the same way.
    """
    return _digest(_KEY_FIELDS(key))


def _digest(fields: tuple[Any, ...]) -> str:
    """``key_digest`` of a key's fields: as text, joined by \x1f."""
    return hashlib.blake2b((_KEY_TEXT % fields).encode(), digest_size=16).hexdigest()


def stored_versioned(sock: pb.Socket) -> tuple[Any, ...]:
    """The versioned attributes as ``socket_row`` stores them, unchecked: equal to a stored row means valid."""
    return (
        STATES.get(sock.state),
        sock.peer_inode or None,
        sock.uid if sock.HasField("uid") else None,
        sock.user or None,
        sock.pid if sock.HasField("pid") else None,
        sock.process or None,
        sock.cmdline or None,
        sock.owners,
    )


def socket_row(sock: pb.Socket, where: str = "socket", digest: str | None = None) -> SocketRow:
    """One socket's row; the common case (known state, short names) takes few function calls.  ``digest``:
    its key's ``key_digest``, when already made."""
    key = key_row(sock.key, where, digest)
    state = STATES.get(sock.state)
    if state is None:
        raise RejectedMessage(f"{where}.state: {sock.state} is not a known value")
    peer_inode, owners, user, process, cmdline = sock.peer_inode, sock.owners, sock.user, sock.process, sock.cmdline
    if peer_inode > MAX_BIGINT:
        _number(peer_inode, f"{where}.peer_inode")
    pid = sock.pid if sock.HasField("pid") else None
    if (pid or 0) > MAX_PID or owners > MAX_PID:
        _number(pid or 0, f"{where}.pid", MAX_PID)
        _number(owners, f"{where}.owners", MAX_PID)
    if (
        len(user) > MAX_NAME
        or len(process) > MAX_NAME
        or len(cmdline) > MAX_TEXT
        or "\x00" in user
        or "\x00" in process
        or "\x00" in cmdline
    ):
        text(user, f"{where}.user")
        text(process, f"{where}.process")
        text(cmdline, f"{where}.cmdline", MAX_TEXT)
    uid = sock.uid if sock.HasField("uid") else None
    return SocketRow(
        (
            *key,
            state,
            peer_inode or None,
            uid,
            user or None,
            pid,
            process or None,
            cmdline or None,
            owners,
            sock.rx_queue,
            sock.tx_queue,
        )
    )


def coverage_json(cov: pb.Coverage, where: str = "coverage") -> tuple[str, bool]:
    """Coverage as stored (JSON) and whether the scan saw everything."""
    sources = _sources(cov, where)
    unscanned = _namespaces(cov.namespaces_unscanned, f"{where}.namespaces_unscanned")
    scanned = [
        _number(n, f"{where}.namespaces_scanned")
        for n in _many(cov.namespaces_scanned, limits.MAX_NAMESPACES, f"{where}.namespaces_scanned")
    ]
    unreadable = list(_many(cov.processes_unreadable, limits.MAX_PIDS, f"{where}.processes_unreadable"))
    gaps = _gaps(cov, where)
    events_unseen = _namespaces(cov.events_unseen, f"{where}.events_unseen")
    document = {
        "sources": sources,
        "namespaces_scanned": scanned,
        "namespaces_unscanned": unscanned,
        "processes_unreadable": unreadable,
        "gaps": gaps,
        **({"events_unseen": events_unseen} if events_unseen else {}),
    }
    complete = all(s["ok"] for s in sources) and not unscanned and not unreadable and not gaps
    return json.dumps(document), complete


def _namespaces(items: Any, where: str) -> list[list[str | None]]:
    """Namespaces with a reason (not scanned, or their events not seen), as the coverage document lists them."""
    return [
        [text(u.netns, f"{where}[{i}].netns"), text(u.reason, f"{where}[{i}].reason", MAX_TEXT)]
        for i, u in enumerate(_many(items, limits.MAX_NAMESPACES, where))
    ]


def _sources(cov: pb.Coverage, where: str) -> list[dict[str, Any]]:
    return [
        {
            "source": text(s.source, f"{where}.sources[{i}].source"),
            "netns": _number(s.netns, f"{where}.sources[{i}]"),
            "ok": s.ok,
            "seconds": s.duration_us / 1e6,
            "records": s.records,
            "error": text(s.error, f"{where}.sources[{i}].error", MAX_TEXT),
        }
        for i, s in enumerate(_many(cov.sources, limits.MAX_SOURCES, f"{where}.sources"))
    ]


def _gaps(cov: pb.Coverage, where: str) -> list[dict[str, Any]]:
    return [
        {
            "from": convert_time(g.from_us),
            "to": convert_time(g.to_us),
            "reason": text(g.reason, f"{where}.gaps[{i}].reason", MAX_TEXT),
        }
        for i, g in enumerate(_many(cov.gaps, limits.MAX_GAPS, f"{where}.gaps"))
    ]


def addresses(items: Any, where: str) -> list[Address]:
    """(netns, interface, address) of each interface address, sorted and without repeats."""
    found = set()
    for index, item in enumerate(_many(items, limits.MAX_ADDRESSES, where)):
        field = f"{where}[{index}]"
        address = text(item.address, f"{field}.address", limits.MAX_ADDRESS, required=True)
        assert address is not None
        address_version(address, f"{field}.address")
        interface = text(item.interface, f"{field}.interface", MAX_SHORT) or ""
        found.add((_number(item.netns, f"{field}.netns"), interface, address))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Greeting:
    """A checked hello: the host's row (``fields``: host_id, name, agent_version, boot_id, interval_seconds and
    clock_skew, seconds its clock is ahead or behind), its addresses, and whether its scans carry them."""

    fields: dict[str, Any]
    addresses: list[Address]
    addresses_in_scans: bool

    @property
    def host_id(self) -> str:
        return str(self.fields["host_id"])


def greeting(hello: pb.Hello, received: datetime | None = None) -> Greeting:
    """A hello, checked field by field."""
    skew = None
    if hello.sent_at_us:
        try:
            skew = round((utc(hello.sent_at_us) - (received or now())).total_seconds(), 3)
        except OverflowError:
            raise RejectedMessage(f"hello.sent_at_us: {hello.sent_at_us} is not a plausible time") from None
    fields = {
        "host_id": text(hello.host_id, "hello.host_id", required=True),
        "name": text(hello.host_name, "hello.host_name") or hello.host_id,
        "agent_version": text(hello.agent_version, "hello.agent_version", MAX_SHORT) or "",
        "boot_id": text(hello.boot_id, "hello.boot_id", MAX_SHORT) or "",
        "interval_seconds": min(max(hello.interval_seconds, 1), 86400),
        "clock_skew": skew,
    }
    return Greeting(fields, addresses(hello.addresses, "hello.addresses"), hello.addresses_in_scans)


# A stored open row as the store reads it for comparison: its id, and its versioned columns.
Held = Mapping[str, tuple[int, tuple[Any, ...]]]


class Listing:
    """The sockets a snapshot lists (over all its parts), each checked and converted when it is written."""

    def __init__(self, parts: Iterable[Sequence[pb.Socket]]) -> None:
        self._sockets = [sock for part in parts for sock in part]
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._sockets)

    def indexed(self) -> Iterator[tuple[str, int]]:
        """Each socket's key digest and place in the listing; a socket listed twice refuses the snapshot."""
        index: dict[str, int] = {}
        for number, sock in enumerate(self._sockets):
            digest = key_digest(sock.key)
            if digest in index:
                raise RejectedMessage(f"snapshot.sockets[{number}]: the same socket is listed twice")
            index[digest] = number
            yield digest, number
        self._index = index

    def digests(self) -> Mapping[str, int]:
        """Key digest → place in the listing, for every socket."""
        if self._index is None:
            for _ in self.indexed():
                pass
        assert self._index is not None
        return self._index

    def row(self, number: int) -> SocketRow:
        return socket_row(self._sockets[number], f"snapshot.sockets[{number}]")

    def opening(self, held: Held, listed: Iterable[tuple[str, int]]) -> list[SocketRow]:
        """The rows to open for ``listed`` (digest, place) against the host's open rows: sockets new, or
        changed since their row was stored.  An unchanged socket was checked when it was stored."""
        sockets = self._sockets
        return [
            socket_row(sockets[number], f"snapshot.sockets[{number}]", digest)
            for digest, number in listed
            if (stored := held.get(digest)) is None or stored[1] != stored_versioned(sockets[number])
        ]


@dataclass(frozen=True, slots=True)
class Changes:
    """What a delta changes: rows of the sockets added and changed, key digests of those removed."""

    added: list[SocketRow]
    changed: list[SocketRow]
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def changes(delta: pb.Delta) -> Changes:
    """A delta's sockets, checked; a socket may appear once among added, changed and removed."""
    added = [socket_row(s, f"delta.added[{i}]") for i, s in enumerate(delta.added)]
    changed = [socket_row(s, f"delta.changed[{i}]") for i, s in enumerate(delta.changed)]
    removed = [key_row(k, f"delta.removed[{i}]")[0] for i, k in enumerate(delta.removed)]
    keys = [row.key for row in added] + [row.key for row in changed] + removed
    if len(set(keys)) != len(keys):
        raise RejectedMessage("delta: a socket appears twice among added, changed and removed")
    return Changes(added, changed, removed)


ROLES = ("s", "c", "n")  # served, calling, not folded (sockfleet.connections)


@dataclass(frozen=True, slots=True)
class Closed:
    """Connections that closed between two scans (``Closings``): flow rows as ``closed_flows`` stores them
    (without host and time), and what the agent could not count."""

    flows: list[dict[str, Any]]
    lost: int
    overflowed: int


def closed(message: pb.Closings, where: str) -> Closed:
    flows = [
        closed_flow(f, f"{where}.flows[{i}]")
        for i, f in enumerate(_many(message.flows, limits.MAX_CLOSED_FLOWS, f"{where}.flows"))
    ]
    return Closed(flows, message.lost, message.overflowed)


def closed_flow(flow: pb.ClosedFlow, where: str) -> dict[str, Any]:
    """One flow of closed connections, checked: its role, addresses and ports as a flow keeps them."""
    proto = _enum(PROTOS, flow.proto, f"{where}.proto")
    if proto == "unix":
        raise RejectedMessage(f"{where}.proto: closed connections are tcp or udp")
    if flow.role not in ROLES:
        raise RejectedMessage(f"{where}.role: {flow.role!r} is not one of s, c, n")
    local = _required_address(flow.local_address, f"{where}.local_address")
    remote = _required_address(flow.remote_address, f"{where}.remote_address")
    if address_version(local, f"{where}.local_address") != address_version(remote, f"{where}.remote_address"):
        raise RejectedMessage(f"{where}: the local and remote addresses are of different families")
    if flow.short_lived > flow.connections:
        raise RejectedMessage(f"{where}.short_lived: {flow.short_lived} is more than connections {flow.connections}")
    if flow.HasField("sent_bytes") != flow.HasField("received_bytes"):
        raise RejectedMessage(f"{where}: sent_bytes and received_bytes go together")
    return {
        "netns": _number(flow.netns, f"{where}.netns"),
        "proto": proto,
        "role": flow.role,
        "process": text(flow.process, f"{where}.process"),
        "local_address": local,
        "local_port": _folded_port(flow.local_port, flow.role == "c", f"{where}.local_port"),
        "remote_address": remote,
        "remote_port": _folded_port(flow.remote_port, flow.role == "s", f"{where}.remote_port"),
        "connections": flow.connections,
        "short_lived": flow.short_lived,
        "sent_bytes": _number(flow.sent_bytes, f"{where}.sent_bytes") if flow.HasField("sent_bytes") else None,
        "received_bytes": (
            _number(flow.received_bytes, f"{where}.received_bytes") if flow.HasField("received_bytes") else None
        ),
        "first_at": utc(_number(flow.first_us, f"{where}.first_us")),
        "last_at": utc(_number(flow.last_us, f"{where}.last_us")),
    }


def _required_address(value: str, field: str) -> str:
    if not value:
        raise RejectedMessage(f"{field}: an address is required")
    address_version(value, field)
    return value


def _folded_port(value: int, folded: bool, field: str) -> int | None:
    """A port of a closed flow: 0 where its role folds it away (stored as null), else 1-65535."""
    if folded:
        if value:
            raise RejectedMessage(f"{field}: folded away by the flow's role, so 0")
        return None
    if not 0 < value <= 65535:
        raise RejectedMessage(f"{field}: {value} is not a port (1-65535)")
    return value


@dataclass(frozen=True, slots=True)
class Scan:
    """One snapshot or delta of a host, as the store applies it: header fields checked, and its sockets: a
    snapshot's ``Listing``, or a delta's ``Changes``."""

    where: str  # "snapshot" or "delta", as refusals name its fields
    epoch: int
    seq: int
    base_seq: int  # the message a delta follows; 0 for a snapshot
    taken_at_us: int
    coverage: str | None  # JSON, see ``coverage_json``; None when the message has none
    complete: bool | None
    gaps: int
    addresses: list[Address] | None
    body: Listing | Changes
    closed: Closed | None = None  # connections that closed since the previous scan, when the agent sends them


def scan(message: pb.Snapshot | pb.Delta) -> Scan:
    return snapshot(message) if isinstance(message, pb.Snapshot) else delta(message)


def snapshot(parts: pb.Snapshot | Sequence[pb.Snapshot]) -> Scan:
    """A snapshot, or the parts of one (the last part holds the header)."""
    parts = [parts] if isinstance(parts, pb.Snapshot) else parts
    return _scan(parts[-1], "snapshot", 0, lambda: Listing(part.sockets for part in parts))


def delta(message: pb.Delta) -> Scan:
    return _scan(message, "delta", message.base_seq, lambda: changes(message))


def _scan(message: pb.Snapshot | pb.Delta, where: str, base_seq: int, body: Callable[[], Listing | Changes]) -> Scan:
    """The header fields checked first, then the sockets (``body``)."""
    if message.epoch == 0 or message.seq == 0:
        raise RejectedMessage(f"{where}: epoch and seq start at 1")
    if max(message.epoch, message.seq, base_seq) > MAX_BIGINT:
        raise RejectedMessage(f"{where}: epoch and seq must be below 2**63")
    coverage, complete, gaps = None, None, 0
    if message.HasField("coverage"):
        coverage, complete = coverage_json(message.coverage, f"{where}.coverage")
        gaps = len(message.coverage.gaps)
    found = addresses(message.addresses.items, f"{where}.addresses") if message.HasField("addresses") else None
    ended = closed(message.closed, f"{where}.closed") if message.HasField("closed") else None
    return Scan(
        where, message.epoch, message.seq, base_seq, message.taken_at_us, coverage, complete, gaps, found, body(), ended
    )
