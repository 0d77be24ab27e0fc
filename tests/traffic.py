"""Short TCP connections with known payloads, for the tests of connections that close between scans."""

from __future__ import annotations

import socket
import threading


def exchange(server: socket.socket, count: int, request: int, answer: int) -> int:
    """``count`` short TCP connections to ``server``: each sends ``request`` bytes and gets ``answer``."""
    host, port = server.getsockname()[:2]
    assert isinstance(port, int)

    def serve() -> None:
        for _ in range(count):
            conn, _ = server.accept()
            with conn:
                got = 0
                while got < request:
                    got += len(conn.recv(65536))
                conn.sendall(b"a" * answer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for _ in range(count):
            with socket.create_connection((host, port)) as client:
                client.sendall(b"r" * request)
                got = 0
                while got < answer:
                    got += len(client.recv(65536))
    finally:
        thread.join()
        server.close()  # the listener goes with its connections
    return port
