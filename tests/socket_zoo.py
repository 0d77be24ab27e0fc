"""A process that opens one socket of every kind, reports them as JSON, and waits.

Run as ``python -m tests.socket_zoo DIR``: it names itself ``sockzoo`` (so its
process name is known), forks one child that shares the pre-fork listener, opens
the sockets, prints one JSON object describing them, and exits when its standard
input closes.  Each entry gives what the kernel must report for that socket.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

NAME = "sockzoo"


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def describe(sock: socket.socket, **fields: Any) -> dict[str, Any]:
    return {"inode": inode(sock), **fields}


def inet(sock: socket.socket, proto: str, state: str, remote: bool = True) -> dict[str, Any]:
    family = "inet6" if sock.family == socket.AF_INET6 else "inet"
    local = sock.getsockname()
    peer = sock.getpeername() if remote else (None, None)
    return describe(
        sock,
        proto=proto,
        family=family,
        type="stream" if proto == "tcp" else "dgram",
        state=state,
        local_address=local[0],
        local_port=local[1],
        remote_address=peer[0],
        remote_port=peer[1],
    )


def unix(sock: socket.socket, state: str, path: str | None, peer: socket.socket | None = None) -> dict[str, Any]:
    kinds = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
    return describe(
        sock,
        proto="unix",
        family="unix",
        type=kinds[sock.type],
        state=state,
        path=path,
        peer_inode=inode(peer) if peer is not None else None,
    )


def open_zoo(folder: str) -> tuple[dict[str, dict[str, Any]], list[socket.socket]]:
    """Every kind of socket sockfleet must see: their descriptions, and the sockets to keep open."""
    keep: list[socket.socket] = []
    zoo: dict[str, dict[str, Any]] = {}

    def hold(*socks: socket.socket) -> None:
        keep.extend(socks)

    tcp4 = socket.create_server(("127.0.0.1", 0))
    tcp6 = socket.socket(socket.AF_INET6)
    tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    tcp6.bind(("::1", 0))
    tcp6.listen()
    dual = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    hold(tcp4, tcp6, dual)
    zoo["tcp4_listen"] = inet(tcp4, "tcp", "LISTEN", remote=False)
    zoo["tcp6_listen_v6only"] = inet(tcp6, "tcp", "LISTEN", remote=False)
    zoo["tcp_dualstack_listen"] = inet(dual, "tcp", "LISTEN", remote=False)

    client = socket.create_connection(tcp4.getsockname()[:2])
    server, _ = tcp4.accept()
    hold(client, server)
    zoo["tcp4_client"] = inet(client, "tcp", "ESTABLISHED")
    zoo["tcp4_server"] = inet(server, "tcp", "ESTABLISHED")

    mapped_client = socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
    mapped_server, _ = dual.accept()
    hold(mapped_client, mapped_server)
    zoo["tcp_v4_mapped_server"] = inet(mapped_server, "tcp", "ESTABLISHED")

    six_client = socket.create_connection(("::1", tcp6.getsockname()[1]))
    six_server, _ = tcp6.accept()
    hold(six_client, six_server)
    zoo["tcp6_client"] = inet(six_client, "tcp", "ESTABLISHED")

    # FIN_WAIT2 / CLOSE_WAIT: the client shuts its sending side, the server does not answer.
    closing = socket.create_connection(tcp4.getsockname()[:2])
    half_closed, _ = tcp4.accept()
    closing.shutdown(socket.SHUT_WR)
    hold(closing, half_closed)
    zoo["tcp_fin_wait2"] = inet(closing, "tcp", "FIN_WAIT2")
    zoo["tcp_close_wait"] = inet(half_closed, "tcp", "CLOSE_WAIT")

    # TIME_WAIT: the side that closes first keeps the connection for 60 s, owned by no process.
    done = socket.create_connection(tcp4.getsockname()[:2])
    done_server, _ = tcp4.accept()
    time_wait = inet(done, "tcp", "TIME_WAIT")
    done.close()
    done_server.close()
    time_wait["inode"] = 0
    zoo["tcp_time_wait"] = time_wait

    # SYN_SENT: a listener with a full accept queue drops new SYNs, so the client keeps retrying.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = socket.create_connection(full.getsockname())
    hold(full, queued)
    for _ in range(2):
        pending = socket.socket()
        pending.setblocking(False)
        pending.connect_ex(full.getsockname())
        hold(pending)
    time.sleep(0.2)
    zoo["tcp_syn_sent"] = describe(
        pending,
        proto="tcp",
        family="inet",
        type="stream",
        state="SYN_SENT",
        local_address="127.0.0.1",
        local_port=pending.getsockname()[1],
        remote_address="127.0.0.1",
        remote_port=full.getsockname()[1],
    )

    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("127.0.0.1", 0))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    udp_connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_connected.connect(udp4.getsockname())
    hold(udp4, udp6, udp_connected)
    zoo["udp4_bound"] = inet(udp4, "udp", "UNCONN", remote=False)
    zoo["udp6_bound"] = inet(udp6, "udp", "UNCONN", remote=False)
    zoo["udp4_connected"] = inet(udp_connected, "udp", "ESTABLISHED")

    stream_path = os.path.join(folder, "stream.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(stream_path)
    listener.listen()
    unix_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_client.connect(stream_path)
    unix_server, _ = listener.accept()
    hold(listener, unix_client, unix_server)
    zoo["unix_listen"] = unix(listener, "LISTEN", stream_path)
    zoo["unix_client"] = unix(unix_client, "ESTABLISHED", None, peer=unix_server)
    zoo["unix_server"] = unix(unix_server, "ESTABLISHED", stream_path, peer=unix_client)

    dgram_path = os.path.join(folder, "dgram.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(dgram_path)
    hold(receiver)
    zoo["unix_dgram_bound"] = unix(receiver, "UNCONN", dgram_path)

    abstract_name = f"sockfleet-zoo-{os.getpid()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    hold(abstract)
    zoo["unix_abstract_listen"] = unix(abstract, "LISTEN", "@" + abstract_name)

    left, right = socket.socketpair()
    seq_left, seq_right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hold(left, right, seq_left, seq_right)
    zoo["unix_pair_left"] = unix(left, "ESTABLISHED", None, peer=right)
    zoo["unix_pair_right"] = unix(right, "ESTABLISHED", None, peer=left)
    zoo["unix_seqpacket_left"] = unix(seq_left, "ESTABLISHED", None, peer=seq_right)
    return zoo, keep


def main() -> None:
    with open("/proc/self/comm", "w") as comm:
        comm.write(NAME)
    prefork = socket.create_server(("127.0.0.1", 0))
    worker = os.fork()
    if worker == 0:  # a pre-fork worker: shares its parent's listener, like a forked web server
        sys.stdin.read()
        os._exit(0)
    zoo, keep = open_zoo(sys.argv[1])
    zoo["tcp_prefork_listen"] = inet(prefork, "tcp", "LISTEN", remote=False)
    for entry in zoo.values():
        entry["pid"] = None if entry["inode"] == 0 else os.getpid()
        entry["owners"] = 0 if entry["inode"] == 0 else 1
    zoo["tcp_prefork_listen"]["owners"] = 2
    print(json.dumps({"pid": os.getpid(), "worker": worker, "sockets": zoo}), flush=True)
    sys.stdin.read()
    os.waitpid(worker, 0)
    del keep


if __name__ == "__main__":
    main()
