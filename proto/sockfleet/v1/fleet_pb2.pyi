from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Proto(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTO_UNSPECIFIED: _ClassVar[Proto]
    PROTO_TCP: _ClassVar[Proto]
    PROTO_UDP: _ClassVar[Proto]
    PROTO_UNIX: _ClassVar[Proto]

class Family(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAMILY_UNSPECIFIED: _ClassVar[Family]
    FAMILY_INET: _ClassVar[Family]
    FAMILY_INET6: _ClassVar[Family]
    FAMILY_UNIX: _ClassVar[Family]

class SockType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOCK_TYPE_UNSPECIFIED: _ClassVar[SockType]
    SOCK_TYPE_STREAM: _ClassVar[SockType]
    SOCK_TYPE_DGRAM: _ClassVar[SockType]
    SOCK_TYPE_SEQPACKET: _ClassVar[SockType]

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    STATE_ESTABLISHED: _ClassVar[State]
    STATE_SYN_SENT: _ClassVar[State]
    STATE_SYN_RECV: _ClassVar[State]
    STATE_FIN_WAIT1: _ClassVar[State]
    STATE_FIN_WAIT2: _ClassVar[State]
    STATE_TIME_WAIT: _ClassVar[State]
    STATE_CLOSE: _ClassVar[State]
    STATE_CLOSE_WAIT: _ClassVar[State]
    STATE_LAST_ACK: _ClassVar[State]
    STATE_LISTEN: _ClassVar[State]
    STATE_CLOSING: _ClassVar[State]
    STATE_UNCONN: _ClassVar[State]
PROTO_UNSPECIFIED: Proto
PROTO_TCP: Proto
PROTO_UDP: Proto
PROTO_UNIX: Proto
FAMILY_UNSPECIFIED: Family
FAMILY_INET: Family
FAMILY_INET6: Family
FAMILY_UNIX: Family
SOCK_TYPE_UNSPECIFIED: SockType
SOCK_TYPE_STREAM: SockType
SOCK_TYPE_DGRAM: SockType
SOCK_TYPE_SEQPACKET: SockType
STATE_UNSPECIFIED: State
STATE_ESTABLISHED: State
STATE_SYN_SENT: State
STATE_SYN_RECV: State
STATE_FIN_WAIT1: State
STATE_FIN_WAIT2: State
STATE_TIME_WAIT: State
STATE_CLOSE: State
STATE_CLOSE_WAIT: State
STATE_LAST_ACK: State
STATE_LISTEN: State
STATE_CLOSING: State
STATE_UNCONN: State

class AgentMessage(_message.Message):
    __slots__ = ("hello", "snapshot", "delta")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    snapshot: Snapshot
    delta: Delta
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("ack", "resync")
    ACK_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    resync: Resync
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., resync: _Optional[_Union[Resync, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host_id", "host_name", "agent_version", "boot_id", "addresses", "interval_seconds", "sent_at_us", "addresses_in_scans", "interval_ms")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_US_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_IN_SCANS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    host_name: str
    agent_version: str
    boot_id: str
    addresses: _containers.RepeatedCompositeFieldContainer[InterfaceAddress]
    interval_seconds: int
    sent_at_us: int
    addresses_in_scans: bool
    interval_ms: int
    def __init__(self, host_id: _Optional[str] = ..., host_name: _Optional[str] = ..., agent_version: _Optional[str] = ..., boot_id: _Optional[str] = ..., addresses: _Optional[_Iterable[_Union[InterfaceAddress, _Mapping]]] = ..., interval_seconds: _Optional[int] = ..., sent_at_us: _Optional[int] = ..., addresses_in_scans: _Optional[bool] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class Addresses(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InterfaceAddress]
    def __init__(self, items: _Optional[_Iterable[_Union[InterfaceAddress, _Mapping]]] = ...) -> None: ...

class InterfaceAddress(_message.Message):
    __slots__ = ("netns", "interface", "address")
    NETNS_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    netns: int
    interface: str
    address: str
    def __init__(self, netns: _Optional[int] = ..., interface: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class SocketKey(_message.Message):
    __slots__ = ("netns", "proto", "family", "type", "inode", "local_address", "local_port", "remote_address", "remote_port", "path")
    NETNS_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    netns: int
    proto: Proto
    family: Family
    type: SockType
    inode: int
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    path: str
    def __init__(self, netns: _Optional[int] = ..., proto: _Optional[_Union[Proto, str]] = ..., family: _Optional[_Union[Family, str]] = ..., type: _Optional[_Union[SockType, str]] = ..., inode: _Optional[int] = ..., local_address: _Optional[str] = ..., local_port: _Optional[int] = ..., remote_address: _Optional[str] = ..., remote_port: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class Socket(_message.Message):
    __slots__ = ("key", "state", "peer_inode", "uid", "user", "pid", "process", "cmdline", "owners", "rx_queue", "tx_queue")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PEER_INODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    RX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    key: SocketKey
    state: State
    peer_inode: int
    uid: int
    user: str
    pid: int
    process: str
    cmdline: str
    owners: int
    rx_queue: int
    tx_queue: int
    def __init__(self, key: _Optional[_Union[SocketKey, _Mapping]] = ..., state: _Optional[_Union[State, str]] = ..., peer_inode: _Optional[int] = ..., uid: _Optional[int] = ..., user: _Optional[str] = ..., pid: _Optional[int] = ..., process: _Optional[str] = ..., cmdline: _Optional[str] = ..., owners: _Optional[int] = ..., rx_queue: _Optional[int] = ..., tx_queue: _Optional[int] = ...) -> None: ...

class Coverage(_message.Message):
    __slots__ = ("sources", "namespaces_scanned", "namespaces_unscanned", "processes_unreadable", "gaps", "events_unseen")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_SCANNED_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_UNSCANNED_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_UNSEEN_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[SourceStatus]
    namespaces_scanned: _containers.RepeatedScalarFieldContainer[int]
    namespaces_unscanned: _containers.RepeatedCompositeFieldContainer[UnscannedNamespace]
    processes_unreadable: _containers.RepeatedScalarFieldContainer[int]
    gaps: _containers.RepeatedCompositeFieldContainer[Gap]
    events_unseen: _containers.RepeatedCompositeFieldContainer[UnscannedNamespace]
    def __init__(self, sources: _Optional[_Iterable[_Union[SourceStatus, _Mapping]]] = ..., namespaces_scanned: _Optional[_Iterable[int]] = ..., namespaces_unscanned: _Optional[_Iterable[_Union[UnscannedNamespace, _Mapping]]] = ..., processes_unreadable: _Optional[_Iterable[int]] = ..., gaps: _Optional[_Iterable[_Union[Gap, _Mapping]]] = ..., events_unseen: _Optional[_Iterable[_Union[UnscannedNamespace, _Mapping]]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("from_us", "to_us", "reason")
    FROM_US_FIELD_NUMBER: _ClassVar[int]
    TO_US_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_us: int
    to_us: int
    reason: str
    def __init__(self, from_us: _Optional[int] = ..., to_us: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SourceStatus(_message.Message):
    __slots__ = ("source", "netns", "ok", "duration_us", "records", "error")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    source: str
    netns: int
    ok: bool
    duration_us: int
    records: int
    error: str
    def __init__(self, source: _Optional[str] = ..., netns: _Optional[int] = ..., ok: _Optional[bool] = ..., duration_us: _Optional[int] = ..., records: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class UnscannedNamespace(_message.Message):
    __slots__ = ("netns", "reason")
    NETNS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    netns: str
    reason: str
    def __init__(self, netns: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("epoch", "seq", "taken_at_us", "sockets", "coverage", "addresses", "more", "closed")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_US_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    taken_at_us: int
    sockets: _containers.RepeatedCompositeFieldContainer[Socket]
    coverage: Coverage
    addresses: Addresses
    more: bool
    closed: Closings
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ..., taken_at_us: _Optional[int] = ..., sockets: _Optional[_Iterable[_Union[Socket, _Mapping]]] = ..., coverage: _Optional[_Union[Coverage, _Mapping]] = ..., addresses: _Optional[_Union[Addresses, _Mapping]] = ..., more: _Optional[bool] = ..., closed: _Optional[_Union[Closings, _Mapping]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("epoch", "seq", "base_seq", "taken_at_us", "added", "removed", "changed", "coverage", "addresses", "closed")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_US_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    base_seq: int
    taken_at_us: int
    added: _containers.RepeatedCompositeFieldContainer[Socket]
    removed: _containers.RepeatedCompositeFieldContainer[SocketKey]
    changed: _containers.RepeatedCompositeFieldContainer[Socket]
    coverage: Coverage
    addresses: Addresses
    closed: Closings
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ..., base_seq: _Optional[int] = ..., taken_at_us: _Optional[int] = ..., added: _Optional[_Iterable[_Union[Socket, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[SocketKey, _Mapping]]] = ..., changed: _Optional[_Iterable[_Union[Socket, _Mapping]]] = ..., coverage: _Optional[_Union[Coverage, _Mapping]] = ..., addresses: _Optional[_Union[Addresses, _Mapping]] = ..., closed: _Optional[_Union[Closings, _Mapping]] = ...) -> None: ...

class Closings(_message.Message):
    __slots__ = ("flows", "lost", "overflowed")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    OVERFLOWED_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[ClosedFlow]
    lost: int
    overflowed: int
    def __init__(self, flows: _Optional[_Iterable[_Union[ClosedFlow, _Mapping]]] = ..., lost: _Optional[int] = ..., overflowed: _Optional[int] = ...) -> None: ...

class ClosedFlow(_message.Message):
    __slots__ = ("netns", "proto", "role", "process", "local_address", "local_port", "remote_address", "remote_port", "connections", "short_lived", "sent_bytes", "received_bytes", "first_us", "last_us")
    NETNS_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    SHORT_LIVED_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_US_FIELD_NUMBER: _ClassVar[int]
    LAST_US_FIELD_NUMBER: _ClassVar[int]
    netns: int
    proto: Proto
    role: str
    process: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    connections: int
    short_lived: int
    sent_bytes: int
    received_bytes: int
    first_us: int
    last_us: int
    def __init__(self, netns: _Optional[int] = ..., proto: _Optional[_Union[Proto, str]] = ..., role: _Optional[str] = ..., process: _Optional[str] = ..., local_address: _Optional[str] = ..., local_port: _Optional[int] = ..., remote_address: _Optional[str] = ..., remote_port: _Optional[int] = ..., connections: _Optional[int] = ..., short_lived: _Optional[int] = ..., sent_bytes: _Optional[int] = ..., received_bytes: _Optional[int] = ..., first_us: _Optional[int] = ..., last_us: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("epoch", "seq")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Resync(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...
