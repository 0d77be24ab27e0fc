"""A small fixture fleet as wire messages: hosts, listeners and connections the contract tests reuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sockfleet.v1 import fleet_pb2 as pb

T0 = datetime(2026, 11, 20, 12, 0, 0)  # naive UTC, as stored
NETNS = 4026531840


def us(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1_000_000)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def hello(host: str = "web-1", interval: int = 60, addresses: tuple[str, ...] = ("10.0.0.1",)) -> pb.Hello:
    return pb.Hello(
        host_id=f"id-{host}",
        host_name=host,
        agent_version="test",
        boot_id="boot",
        interval_seconds=interval,
        addresses=[pb.InterfaceAddress(netns=NETNS, interface="eth0", address=a) for a in addresses],
    )


def tcp_listener(
    port: int, process: str = "nginx", pid: int = 100, address: str = "0.0.0.0", inode: int | None = None
) -> pb.Socket:
    return pb.Socket(
        key=pb.SocketKey(
            netns=NETNS,
            proto=pb.PROTO_TCP,
            family=pb.FAMILY_INET,
            type=pb.SOCK_TYPE_STREAM,
            inode=inode or port * 10,
            local_address=address,
            local_port=port,
        ),
        state=pb.STATE_LISTEN,
        uid=0,
        user="root",
        pid=pid,
        process=process,
        cmdline=process,
        owners=1,
    )


def udp_bound(port: int, address: str = "127.0.0.1") -> pb.Socket:
    return pb.Socket(
        key=pb.SocketKey(
            netns=NETNS,
            proto=pb.PROTO_UDP,
            family=pb.FAMILY_INET,
            type=pb.SOCK_TYPE_DGRAM,
            inode=port * 10 + 1,
            local_address=address,
            local_port=port,
        ),
        state=pb.STATE_UNCONN,
        uid=0,
        user="root",
        pid=200,
        process="dnsd",
        owners=1,
    )


def connection(local_port: int, remote: str, remote_port: int, inode: int) -> pb.Socket:
    return pb.Socket(
        key=pb.SocketKey(
            netns=NETNS,
            proto=pb.PROTO_TCP,
            family=pb.FAMILY_INET,
            type=pb.SOCK_TYPE_STREAM,
            inode=inode,
            local_address="10.0.0.1",
            local_port=local_port,
            remote_address=remote,
            remote_port=remote_port,
        ),
        state=pb.STATE_ESTABLISHED,
        uid=0,
        user="root",
        pid=300,
        process="curl",
        owners=1,
    )


def unix_listener(path: str, inode: int) -> pb.Socket:
    return pb.Socket(
        key=pb.SocketKey(
            netns=NETNS, proto=pb.PROTO_UNIX, family=pb.FAMILY_UNIX, type=pb.SOCK_TYPE_STREAM, inode=inode, path=path
        ),
        state=pb.STATE_LISTEN,
        uid=0,
        user="root",
        pid=400,
        process="dockerd",
        owners=1,
    )


def snapshot(seq: int, moment: datetime, sockets: list[pb.Socket], epoch: int = 1) -> pb.Snapshot:
    return pb.Snapshot(
        epoch=epoch,
        seq=seq,
        taken_at_us=us(moment),
        sockets=sockets,
        coverage=pb.Coverage(
            sources=[pb.SourceStatus(source="netlink", netns=NETNS, ok=True, records=len(sockets))],
            namespaces_scanned=[NETNS],
        ),
    )


def delta(
    seq: int,
    moment: datetime,
    added: list[pb.Socket] | None = None,
    removed: list[pb.Socket] | None = None,
    changed: list[pb.Socket] | None = None,
    epoch: int = 1,
    base: int | None = None,
) -> pb.Delta:
    return pb.Delta(
        epoch=epoch,
        seq=seq,
        base_seq=seq - 1 if base is None else base,
        taken_at_us=us(moment),
        added=added or [],
        removed=[s.key for s in removed or []],
        changed=changed or [],
    )


def inet(
    proto: str,
    local: str,
    local_port: int,
    remote: str | None,
    remote_port: int,
    inode: int,
    process: str,
    state: int | None = None,
    pid: int = 1000,
) -> pb.Socket:
    """Any TCP or UDP socket; with no ``remote`` it waits for peers (TCP LISTEN, UDP UNCONN)."""
    family = pb.FAMILY_INET6 if ":" in local else pb.FAMILY_INET
    tcp = proto == "tcp"
    if state is None:
        state = pb.STATE_ESTABLISHED if remote else (pb.STATE_LISTEN if tcp else pb.STATE_UNCONN)
    return pb.Socket(
        key=pb.SocketKey(
            netns=NETNS,
            proto=pb.PROTO_TCP if tcp else pb.PROTO_UDP,
            family=family,
            type=pb.SOCK_TYPE_STREAM if tcp else pb.SOCK_TYPE_DGRAM,
            inode=inode,
            local_address=local,
            local_port=local_port,
            remote_address=remote or "",
            remote_port=remote_port if remote else 0,
        ),
        state=state,  # type: ignore[arg-type]
        uid=0,
        user="root",
        pid=pid,
        process=process,
        owners=1,
    )


def unix(path: str | None, inode: int, peer: int, process: str, pid: int = 2000) -> pb.Socket:
    return pb.Socket(
        key=pb.SocketKey(
            netns=NETNS,
            proto=pb.PROTO_UNIX,
            family=pb.FAMILY_UNIX,
            type=pb.SOCK_TYPE_STREAM,
            inode=inode,
            path=path or "",
        ),
        state=pb.STATE_ESTABLISHED,
        peer_inode=peer,
        uid=0,
        user="root",
        pid=pid,
        process=process,
        owners=1,
    )


def closed_calls(
    moment: datetime, connections: int, short_lived: int, sent: int, received: int, lost: int = 0
) -> pb.Closings:
    """Calls from app on 10.0.0.1 to 10.0.0.2:5432 that closed between the scan at ``moment`` and the one before,
    the first 40 minutes before it and the last 10."""
    flow = pb.ClosedFlow(
        netns=NETNS,
        proto=pb.PROTO_TCP,
        role="c",
        process="app",
        local_address="10.0.0.1",
        remote_address="10.0.0.2",
        remote_port=5432,
        connections=connections,
        short_lived=short_lived,
        sent_bytes=sent,
        received_bytes=received,
        first_us=us(moment - timedelta(minutes=40)),
        last_us=us(moment - timedelta(minutes=10)),
    )
    return pb.Closings(flows=[flow], lost=lost)
