"""Snapshots to wire messages: the one place the agent touches protobuf types.

A socket travels as its ``SocketKey`` (what identifies it for life) and its
attributes: versioned ones (state, peer, owner) and volatile readings (queue
lengths).  ``Comparable`` is the part of a socket whose change is news to the
collector: queue lengths are left out, so a busy but unchanged host sends
heartbeats only.
"""

from __future__ import annotations

from typing import NamedTuple

from agent.records import Coverage, Family, Proto, Snapshot, SockType, State
from sockfleet.v1 import fleet_pb2 as pb

PROTOS = {Proto.TCP: pb.PROTO_TCP, Proto.UDP: pb.PROTO_UDP, Proto.UNIX: pb.PROTO_UNIX}
FAMILIES = {Family.INET: pb.FAMILY_INET, Family.INET6: pb.FAMILY_INET6, Family.UNIX: pb.FAMILY_UNIX}
TYPES = {SockType.STREAM: pb.SOCK_TYPE_STREAM, SockType.DGRAM: pb.SOCK_TYPE_DGRAM,
         SockType.SEQPACKET: pb.SOCK_TYPE_SEQPACKET}
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
    """Each socket of the snapshot by key, in the wire's enum numbers."""
    out: dict[Key, Entry] = {}
    owners = snapshot.owners
    details = {pid: (p.name, p.cmdline) for pid, p in snapshot.processes.items()}
    users = snapshot.users
    for r in snapshot.sockets:
        key: Key = (
            r.netns, PROTOS[r.proto], FAMILIES[r.family], TYPES[r.type], r.inode,
            r.local_address or "", r.local_port or 0, r.remote_address or "", r.remote_port or 0, r.path or "",
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
        netns=netns, proto=proto, family=family, type=kind, inode=inode,  # type: ignore[arg-type]
        local_address=laddr, local_port=lport, remote_address=raddr, remote_port=rport, path=path,
    )


def socket(key: Key, entry: Entry) -> pb.Socket:
    c = entry.comparable
    message = pb.Socket(
        key=socket_key(key), state=c.state, peer_inode=c.peer_inode, user=c.user,  # type: ignore[arg-type]
        process=c.process, cmdline=c.cmdline, owners=c.owners, rx_queue=entry.rx_queue, tx_queue=entry.tx_queue,
    )
    if c.uid is not None:
        message.uid = c.uid
    if c.pid is not None:
        message.pid = c.pid
    return message


def coverage(cov: Coverage) -> pb.Coverage:
    return pb.Coverage(
        sources=[
            pb.SourceStatus(source=s.source, netns=s.netns, ok=s.ok, duration_us=int(s.seconds * 1e6),
                            records=s.records, error=s.error or "")
            for s in cov.sources
        ],
        namespaces_scanned=cov.namespaces_scanned,
        namespaces_unscanned=[pb.UnscannedNamespace(netns=ns, reason=why) for ns, why in cov.namespaces_unscanned],
        processes_unreadable=cov.processes_unreadable,
    )
