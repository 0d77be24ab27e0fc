"""Reading ``ss -tuanxpe`` output into comparable keys: the live oracle for the agent.

An ``ss`` line (iproute2)::

    tcp LISTEN 0 4096 127.0.0.1:8080 0.0.0.0:* users:(("nginx",pid=10,fd=6),("nginx",pid=11,fd=6)) ino:42 ...
    u_str ESTAB 0 0 /run/a.sock 43 * 44 users:(("app",pid=12,fd=3)) ...

becomes ``("tcp", "LISTEN", "127.0.0.1", 8080, None, None, 42)`` with owners {10, 11}.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from typing import Any

Key = tuple[Any, ...]

SS_STATES = {
    "ESTAB": "ESTABLISHED",
    "LISTEN": "LISTEN",
    "UNCONN": "UNCONN",
    "SYN-SENT": "SYN_SENT",
    "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1",
    "FIN-WAIT-2": "FIN_WAIT2",
    "TIME-WAIT": "TIME_WAIT",
    "CLOSE-WAIT": "CLOSE_WAIT",
    "LAST-ACK": "LAST_ACK",
    "CLOSING": "CLOSING",
}
UNIX_TYPES = {"u_str": "stream", "u_dgr": "dgram", "u_seq": "seqpacket"}
WILDCARDS = {"*", "0.0.0.0", "::"}
USERS = re.compile(r'"((?:[^"\\]|\\.)*)",pid=(\d+),fd=\d+')
INODE = re.compile(r"\bino:(\d+)")


def _address(text: str) -> tuple[str | None, int | None]:
    """``"[::1]:80"`` → ``("::1", 80)``; ``"0.0.0.0%lo:*"`` → ``(None, None)``; wildcards become ``"*"``."""
    address, _, port = text.rpartition(":")
    address = address.strip("[]").split("%", 1)[0]
    if port == "*":
        return None, None
    return ("*" if address in WILDCARDS else address), int(port)


def parse(text: str) -> dict[Key, set[tuple[int, str]]]:
    """Each socket's key → its owners as (pid, process name)."""
    sockets: dict[Key, set[tuple[int, str]]] = {}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        netid, state = tokens[0], SS_STATES[tokens[1]]
        owners = {(int(pid), name) for name, pid in USERS.findall(line)}
        if netid in UNIX_TYPES:
            path = None if tokens[4] == "*" else tokens[4]
            peer = int(tokens[7]) or None
            key: Key = ("unix", UNIX_TYPES[netid], state, path, int(tokens[5]), peer)
        else:
            if netid == "tcp" and state == "UNCONN":
                state = "CLOSE"
            inode = INODE.search(line)
            key = (netid, state, *_address(tokens[4]), *_address(tokens[5]), int(inode.group(1)) if inode else 0)
        sockets[key] = owners
    return sockets


def run_ss() -> dict[Key, set[tuple[int, str]]]:
    result = subprocess.run(["ss", "-tuanxpeH"], capture_output=True, text=True, check=True)
    return parse(result.stdout)


def keys(rows: Iterable[dict[str, Any]]) -> dict[Key, tuple[int | None, str | None, int]]:
    """The same keys for sockfleet's JSON rows → (pid, process, owners)."""
    out: dict[Key, tuple[int | None, str | None, int]] = {}
    for row in rows:
        if row["proto"] == "unix":
            key: Key = ("unix", row["type"], row["state"], row["path"], row["inode"] or 0, row["peer_inode"])
        else:
            local = "*" if row["local_address"] in WILDCARDS else row["local_address"]
            remote = "*" if row["remote_address"] in WILDCARDS else row["remote_address"]
            key = (row["proto"], row["state"], local, row["local_port"], remote, row["remote_port"], row["inode"] or 0)
        out[key] = (row["pid"], row["process"], row["owners"])
    return out
