"""Records to wire messages: the one place the agent makes protobuf messages from its records.

Past this module the agent holds wire messages as they are: the spool keeps each waiting scan in its
wire form (that is what it writes to disk and sends again after an outage, unchanged), and the stream
numbers and sends them.

A socket travels as its ``SocketKey`` (what identifies it for life) and its
attributes: versioned ones (state, peer, owner) and volatile readings (queue
lengths).  ``Comparable`` is the part of a socket whose change is news to the
collector: queue lengths are left out, so a busy but unchanged host sends
heartbeats only.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from sockfleet.agent.events import Closings
from sockfleet.agent.records import Coverage, Family, Proto, Snapshot, SockType, State
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import limits
from sockfleet.v1.limits import MAX_NAME, MAX_TEXT, clean

PROTOS = {Proto.TCP: pb.PROTO_TCP, Proto.UDP: pb.PROTO_UDP, Proto.UNIX: pb.PROTO_UNIX}
FAMILIES = {Family.INET: pb.FAMILY_INET, Family.INET6: pb.FAMILY_INET6, Family.UNIX: pb.FAMILY_UNIX}
TYPES = {
    SockType.STREAM: pb.SOCK_TYPE_STREAM,
    SockType.DGRAM: pb.SOCK_TYPE_DGRAM,
    SockType.SEQPACKET: pb.SOCK_TYPE_SEQPACKET,
}
STATES = {state: pb.State.Value(f"STATE_{state.value}") for state in State}

Key = tuple[int, int, int, int, int, str, int, str, int, str]


class Comparable(NamedTuple):
    """The versioned attributes of one socket: any difference is a change worth a history row."""

    state: int
    peer_inode: int
    uid: int | None
    user: str
    pid: int | None
    process: str
    cmdline: str
    owners: int


class Entry(NamedTuple):
    comparable: Comparable
    rx_queue: int
    tx_queue: int


def entries(snapshot: Snapshot) -> dict[Key, Entry]:
    """Each socket of the snapshot by key, in the wire's enum numbers, every string within its wire bound
    (``sockfleet.v1.limits``: a longer command line is shortened with a marker saying how much was cut)."""
    out: dict[Key, Entry] = {}
    owners = snapshot.owners
    details = {pid: (clean(p.name, MAX_NAME), clean(p.cmdline, MAX_TEXT)) for pid, p in snapshot.processes.items()}
    users = {uid: clean(name, MAX_NAME) if name else name for uid, name in snapshot.users.items()}
    for r in snapshot.sockets:
        path = r.path or ""
        if len(path) > MAX_TEXT:
            path = clean(path, MAX_TEXT)
        key: Key = (
            r.netns,
            PROTOS[r.proto],
            FAMILIES[r.family],
            TYPES[r.type],
            r.inode,
            r.local_address or "",
            r.local_port or 0,
            r.remote_address or "",
            r.remote_port or 0,
            path,
        )
        pids = owners.get(r.inode, ()) if r.inode else ()
        pid = pids[0] if pids else None
        name, cmdline = details.get(pid, ("", "")) if pid is not None else ("", "")
        user = (users.get(r.uid) or "") if r.uid is not None else ""
        comparable = Comparable(STATES[r.state], r.peer_inode or 0, r.uid, user, pid, name, cmdline, len(pids))
        out[key] = Entry(comparable, r.rx_queue, r.tx_queue)
    return out


def socket_key(key: Key) -> pb.SocketKey:
    netns, proto, family, kind, inode, laddr, lport, raddr, rport, path = key
    return pb.SocketKey(
        netns=netns,
        proto=proto,  # type: ignore[arg-type]
        family=family,  # type: ignore[arg-type]
        type=kind,  # type: ignore[arg-type]
        inode=inode,
        local_address=laddr,
        local_port=lport,
        remote_address=raddr,
        remote_port=rport,
        path=path,
    )


def socket(key: Key, entry: Entry) -> pb.Socket:
    c = entry.comparable
    message = pb.Socket(
        key=socket_key(key),
        state=c.state,  # type: ignore[arg-type]
        peer_inode=c.peer_inode,
        user=c.user,
        process=c.process,
        cmdline=c.cmdline,
        owners=c.owners,
        rx_queue=entry.rx_queue,
        tx_queue=entry.tx_queue,
    )
    if c.uid is not None:
        message.uid = c.uid
    if c.pid is not None:
        message.pid = c.pid
    return message


def coverage(cov: Coverage) -> pb.Coverage:
    """The coverage within its wire bounds: long reasons shortened, long lists cut."""
    return pb.Coverage(
        sources=[
            pb.SourceStatus(
                source=clean(s.source, MAX_NAME),
                netns=s.netns,
                ok=s.ok,
                duration_us=int(s.seconds * 1e6),
                records=s.records,
                error=clean(s.error or "", MAX_TEXT),
            )
            for s in cov.sources[: limits.MAX_SOURCES]
        ],
        namespaces_scanned=cov.namespaces_scanned[: limits.MAX_NAMESPACES],
        namespaces_unscanned=[
            pb.UnscannedNamespace(netns=clean(ns, MAX_NAME), reason=clean(why, MAX_TEXT))
            for ns, why in cov.namespaces_unscanned[: limits.MAX_NAMESPACES]
        ],
        processes_unreadable=cov.processes_unreadable[: limits.MAX_PIDS],
    )


Address = tuple[int, str, str]  # (netns, interface, address)


def interface_addresses(found: list[Address]) -> list[pb.InterfaceAddress]:
    return [pb.InterfaceAddress(netns=netns, interface=name, address=address) for netns, name, address in found]


def hello(host: tuple[str, str, str], found: list[Address], interval: float, version: str) -> pb.AgentMessage:
    """The first message of a stream, for the host (id, name, boot id) with its interface addresses."""
    host_id, host_name, boot_id = host
    return pb.AgentMessage(
        hello=pb.Hello(
            host_id=host_id,
            host_name=host_name,
            agent_version=version,
            boot_id=boot_id,
            addresses=interface_addresses(found[: limits.MAX_ADDRESSES]),
            interval_seconds=max(1, round(interval)),
            interval_ms=max(1, min(round(interval * 1000), 2**32 - 1)),
            sent_at_us=time.time_ns() // 1000,
            addresses_in_scans=True,
        )
    )


def closings(taken: Closings) -> pb.Closings:
    """The connections that closed between two scans, as the wire carries them (bounded)."""
    out = pb.Closings(lost=taken.lost, overflowed=taken.overflowed)
    for (netns, proto, role, process, laddr, lport, raddr, rport), c in taken.flows.items():
        flow = out.flows.add(
            netns=netns,
            proto=PROTOS[Proto(proto)],
            role=role,
            process=clean(process or "", MAX_NAME),
            local_address=laddr,
            local_port=lport or 0,
            remote_address=raddr,
            remote_port=rport or 0,
            connections=c.connections,
            short_lived=c.short_lived,
            first_us=int(c.first * 1e6),
            last_us=int(c.last * 1e6),
        )
        if c.bytes_known:
            flow.sent_bytes, flow.received_bytes = c.sent, c.received
    return bounded(out)


def _flow_key(flow: pb.ClosedFlow) -> tuple[object, ...]:
    return (flow.netns, flow.proto, flow.role, flow.process, flow.local_address, flow.local_port,
            flow.remote_address, flow.remote_port)  # fmt: skip


def merge_closings(first: pb.Closings, second: pb.Closings) -> pb.Closings:
    """Two intervals' closed connections as one: counts and bytes of the same flow summed."""
    merged = pb.Closings(lost=first.lost + second.lost, overflowed=first.overflowed + second.overflowed)
    flows: dict[tuple[object, ...], pb.ClosedFlow] = {}
    for flow in (*first.flows, *second.flows):
        key = _flow_key(flow)
        held = flows.get(key)
        if held is None:
            flows[key] = held = merged.flows.add()
            held.CopyFrom(flow)
            continue
        held.connections += flow.connections
        held.short_lived += flow.short_lived
        if held.HasField("sent_bytes") and flow.HasField("sent_bytes"):
            held.sent_bytes += flow.sent_bytes
            held.received_bytes += flow.received_bytes
        else:
            held.ClearField("sent_bytes")
            held.ClearField("received_bytes")
        held.first_us, held.last_us = min(held.first_us, flow.first_us), max(held.last_us, flow.last_us)
    return bounded(merged)


def bounded(closed: pb.Closings) -> pb.Closings:
    """At most ``MAX_CLOSED_FLOWS`` flows; the connections of those cut are counted as overflowed."""
    extra = closed.flows[limits.MAX_CLOSED_FLOWS :]
    if extra:
        closed.overflowed += sum(flow.connections for flow in extra)
        del closed.flows[limits.MAX_CLOSED_FLOWS :]
    return closed


def unseen(namespaces: dict[int, str]) -> list[pb.UnscannedNamespace]:
    """Namespaces whose socket-destroy events cannot be read, with why (coverage ``events_unseen``)."""
    items = sorted(namespaces.items())[: limits.MAX_NAMESPACES]
    return [pb.UnscannedNamespace(netns=str(netns), reason=clean(why, MAX_TEXT)) for netns, why in items]
