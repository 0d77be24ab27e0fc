"""A small fixture fleet as wire messages: hosts, listeners and connections the contract tests reuse."""

from __future__ import annotations

import random
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


class Churning:
    """A host whose sockets come and go at random: served and calling connections, listeners that open and close
    (which changes the role of the host's next connections), owners that change, Unix and UDP sockets."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.index, self.rng = index, rng
        self.inode = 1000 * (index + 1)
        self.seq = 1
        self.live: dict[int, pb.Socket] = {}
        for port in (80, 443):
            self._add(inet("tcp", "0.0.0.0", port, None, 0, self._next(), "nginx"))
        for _ in range(8):
            self._add(self._connection())
        self._add(unix("/run/app.sock", self._next(), 0, "app"))
        self._add(udp_bound(53))

    def _next(self) -> int:
        self.inode += 1
        return self.inode

    def _add(self, sock: pb.Socket) -> pb.Socket:
        self.live[sock.key.inode] = sock
        return sock

    def _connection(self) -> pb.Socket:
        peer = f"10.1.{self.index}.{self.rng.randint(1, 4)}"
        if self.rng.random() < 0.5:  # served by the host's web server, or by a port nobody listens on any more
            port = self.rng.choice((80, 443, 8080))
            return inet("tcp", "10.0.0.1", port, peer, self.rng.randint(40000, 60000), self._next(), "nginx")
        process = self.rng.choice(("app", "worker"))
        return inet("tcp", "10.0.0.1", self.rng.randint(40000, 60000), peer, 5432, self._next(), process)

    def snapshot(self, minute: float) -> pb.Snapshot:
        return snapshot(1, at(minute), list(self.live.values()))

    def delta(self, minute: float) -> pb.Delta:
        self.seq += 1
        added, removed, changed = [], [], []
        if self.rng.random() < 0.2:  # now and then an unchanged host: a heartbeat
            return delta(self.seq, at(minute))
        for _ in range(self.rng.randint(0, 4)):
            added.append(self._add(self._connection()))
        connections = [s for s in self.live.values() if s.key.remote_address and s not in added]
        for sock in self.rng.sample(connections, min(len(connections), self.rng.randint(0, 3))):
            removed.append(self.live.pop(sock.key.inode))
        if self.rng.random() < 0.3:  # the listener on 8080 opens, or closes
            listener = next(
                (s for s in self.live.values() if s.key.local_port == 8080 and not s.key.remote_address), None
            )
            if listener is None:
                added.append(self._add(inet("tcp", "0.0.0.0", 8080, None, 0, self._next(), "admin")))
            else:
                removed.append(self.live.pop(listener.key.inode))
        owned = [s for s in self.live.values() if s.key.remote_address and s not in added]
        if owned and self.rng.random() < 0.3:  # a connection handed to another process
            moved = pb.Socket()
            moved.CopyFrom(self.rng.choice(owned))
            moved.pid, moved.process = moved.pid + 1, "handed"
            changed.append(self._add(moved))
        message = delta(self.seq, at(minute), added=added, removed=removed, changed=changed)
        if self.rng.random() < 0.3:
            message.closed.CopyFrom(closed_calls(at(minute), 3, 1, 100, 200))
        if self.rng.random() < 0.3:
            message.coverage.CopyFrom(pb.Coverage(namespaces_scanned=[NETNS]))
        return message
