"""One named process of the multi-host test: serves or calls, prints "ready", holds on until stdin closes.

    python -m tests.fleet_process NAME tcp-listen ADDRESS PORT
    python -m tests.fleet_process NAME tcp-connect ADDRESS PORT COUNT
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


def main() -> None:
    name, action, *args = sys.argv[1:]
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)
    keep: list[socket.socket] = []
    if action == "tcp-listen":
        server = socket.create_server((args[0], int(args[1])))
        keep.append(server)

        def serve(conn: socket.socket) -> None:
            while conn.recv(4096):  # like a real server: close when the client has closed
                pass
            conn.close()

        def accept() -> None:
            while True:
                threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
    elif action == "tcp-connect":
        keep += [socket.create_connection((args[0], int(args[1])), timeout=10) for _ in range(int(args[2]))]
    elif action == "udp-listen":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((args[0], int(args[1])))
        keep.append(udp)
    elif action == "udp-connect":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((args[0], int(args[1])))
        udp.send(b"query")
        keep.append(udp)
    elif action == "unix-listen":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args[0])
        listener.listen()
        keep.append(listener)

        def accept_unix() -> None:
            while True:
                keep.append(listener.accept()[0])

        threading.Thread(target=accept_unix, daemon=True).start()
    elif action == "unix-connect":
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(args[0])
        keep.append(client)
    else:
        raise SystemExit(f"unknown action {action}")
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
