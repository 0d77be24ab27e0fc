"""One named process of the multi-host test: serves or calls, prints "ready", holds on until stdin closes.

    python -m tests.fleet_process NAME tcp-listen ADDRESS PORT
    python -m tests.fleet_process NAME tcp-connect ADDRESS PORT COUNT
    python -m tests.fleet_process NAME tcp-burst ADDRESS PORT COUNT SIZE
    python -m tests.fleet_process NAME udp-listen ADDRESS PORT
    python -m tests.fleet_process NAME udp-connect ADDRESS PORT
    python -m tests.fleet_process NAME unix-listen PATH
    python -m tests.fleet_process NAME unix-connect PATH

NAME becomes the process name (``/proc/self/comm``), so the test can find it in edges.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable


def _serve(conn: socket.socket) -> None:
    while conn.recv(4096):  # like a real server: close when the client has closed
        pass
    conn.close()


def _in_background(accept: Callable[[], None]) -> None:
    def loop() -> None:
        while True:
            accept()

    threading.Thread(target=loop, daemon=True).start()


def tcp_listen(address: str, port: str) -> list[socket.socket]:
    server = socket.create_server((address, int(port)))
    _in_background(lambda: threading.Thread(target=_serve, args=(server.accept()[0],), daemon=True).start())
    return [server]


def tcp_connect(address: str, port: str, count: str) -> list[socket.socket]:
    return [socket.create_connection((address, int(port)), timeout=10) for _ in range(int(count))]


def tcp_burst(address: str, port: str, count: str, size: str) -> list[socket.socket]:
    """COUNT short connections, one after another: each sends SIZE bytes, then waits for the server to close."""
    for _ in range(int(count)):
        with socket.create_connection((address, int(port)), timeout=10) as client:
            client.sendall(b"b" * int(size))
            client.shutdown(socket.SHUT_WR)
            while client.recv(4096):
                pass
    return []


def udp_listen(address: str, port: str) -> list[socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, int(port)))
    return [udp]


def udp_connect(address: str, port: str) -> list[socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect((address, int(port)))
    udp.send(b"query")
    return [udp]


def unix_listen(path: str) -> list[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    keep = [listener]
    _in_background(lambda: keep.append(listener.accept()[0]))
    return keep


def unix_connect(path: str) -> list[socket.socket]:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    return [client]


ACTIONS: dict[str, Callable[..., list[socket.socket]]] = {
    "tcp-listen": tcp_listen,
    "tcp-connect": tcp_connect,
    "tcp-burst": tcp_burst,
    "udp-listen": udp_listen,
    "udp-connect": udp_connect,
    "unix-listen": unix_listen,
    "unix-connect": unix_connect,
}


def main() -> None:
    name, action, *args = sys.argv[1:]
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)
    if action not in ACTIONS:
        raise SystemExit(f"unknown action {action}")
    keep = ACTIONS[action](*args)
    print("ready", flush=True)
    sys.stdin.read()
    del keep


if __name__ == "__main__":
    main()
