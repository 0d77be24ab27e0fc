"""Several hosts on real network namespaces: agents per host, one collector, real traffic between them.

The hosts sit on a bridge inside a switch namespace of their own (the machine's own network is left
alone): host-a (10.77.0.1) serves TCP 8080, UDP 5353 and a Unix socket; host-b and host-c call it;
"outside" (10.77.0.50) runs no agent: host-c calls a service there, and it calls into host-a.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.collector.harness import ask
from tests.collector.network import ADDRESSES, SWITCH, Network

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root"),
]


def talks(db_url: str, *args: str) -> set[tuple[Any, ...]]:
    """Edges between the test's processes; the agents' own streams to the collector are left out."""
    rows = json.loads(ask(db_url, "talks", "--format", "json", *args).stdout)
    return {
        (
            r["proto"],
            r["client_host"] or r["client_address"],
            r["client_process"],
            r["server_host"] or r["server_address"],
            r["server_port"],
            r["server_process"],
            r["connections"],
            r["direction"],
        )
        for r in rows
        if r["server_address"] != SWITCH and r["client_process"] != "python"
    }


def wait_until(check: Any, what: str, timeout: float = 60, show: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}" + (f"; now: {show()}" if show else ""))


def stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


WEB_B = ("tcp", "host-b", "webcli", "host-a", 8080, "websvc", 2, "listener")
WEB_C = ("tcp", "host-c", "webcli", "host-a", 8080, "websvc", 1, "listener")
DNS_B = ("udp", "host-b", "dnscli", "host-a", 5353, "dnssvc", 1, "listener")
CALL_OUT = ("tcp", "host-c", "extcli", "10.77.0.50", 9000, None, 1, "ephemeral port")
CALL_IN = ("tcp", "10.77.0.50", None, "host-a", 8080, "websvc", 1, "listener")
UNIX_A = ("unix", "host-a", "appcli", "host-a", None, "appsvc", 1, "unix path")


def test_three_hosts_and_the_outside(network: Network, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    collector = network.run(
        network.switch,
        sys.executable,
        "-m",
        "sockfleet",
        "collector",
        "serve",
        "--insecure",
        "--allow-anonymous",
        "--listen",
        f"{SWITCH}:7050",
        "--db",
        db_url,
        ready=False,
    )
    assert collector.stderr is not None
    assert "listening on" in collector.stderr.readline()
    for host in ("host-a", "host-b", "host-c"):
        network.run(
            network.hosts[host],
            sys.executable,
            "-m",
            "sockfleet",
            "agent",
            "run",
            "--collector",
            f"{SWITCH}:7050",
            "--insecure",
            "--interval",
            "0.5s",
            "--namespaces",
            "current",
            "--host",
            host,
            ready=False,
        )
    a = ADDRESSES["host-a"]
    network.process("host-a", "websvc", "tcp-listen", "0.0.0.0", "8080")
    network.process("host-a", "dnssvc", "udp-listen", "0.0.0.0", "5353")
    socket_path = str(tmp_path / "app.sock")
    network.process("host-a", "appsvc", "unix-listen", socket_path)
    network.process("host-a", "appcli", "unix-connect", socket_path)
    network.process("outside", "extsvc", "tcp-listen", "0.0.0.0", "9000")
    network.process("host-b", "webcli", "tcp-connect", a, "8080", "2")
    network.process("host-b", "dnscli", "udp-connect", a, "5353")
    web_c = network.process("host-c", "webcli", "tcp-connect", a, "8080", "1")
    network.process("host-c", "extcli", "tcp-connect", ADDRESSES["outside"], "9000", "1")
    intruder = network.process("outside", "intruder", "tcp-connect", a, "8080", "1")
    expected = {WEB_B, WEB_C, DNS_B, CALL_OUT, CALL_IN, UNIX_A}
    wait_until(lambda: expected <= talks(db_url), "every edge", show=lambda: talks(db_url))
    assert talks(db_url) == expected

    engine = create_engine(db_url)  # the SQL view says the same as the command
    with engine.connect() as conn:
        viewed = {
            (
                r.proto,
                r.client_host or r.client_address,
                r.client_process,
                r.server_host or r.server_address,
                r.server_port,
                r.server_process,
                r.connections,
                r.direction,
            )
            for r in conn.execute(text("SELECT * FROM edges"))
            if r.server_address != SWITCH and r.client_process != "python"
        }
    engine.dispose()
    assert viewed == expected

    hosts = {h["host"]: h for h in json.loads(ask(db_url, "hosts", "--format", "json").stdout)}
    assert set(hosts) == {"host-a", "host-b", "host-c"}
    assert ADDRESSES["host-a"] in hosts["host-a"]["addresses"].split()

    time.sleep(1)
    earlier = stamp()
    time.sleep(1)
    network.stop(web_c)
    network.stop(intruder)
    wait_until(lambda: not {WEB_C, CALL_IN} & talks(db_url), "the closed connections", show=lambda: talks(db_url))
    time.sleep(1)
    later = stamp()

    assert {WEB_C, CALL_IN} <= talks(db_url, "--at", earlier)
    assert WEB_B in talks(db_url, "--at", later)
    window = talks(db_url, "--since", earlier, "--until", later)
    # The whole window, as text (a list is shortened in the report), to tell a missing edge's twin.
    assert {WEB_C, CALL_IN} <= window, "\n".join(map(str, sorted(window, key=str)))
    assert talks(db_url, "--port", "5353") == {DNS_B}
    assert talks(db_url, "--host", "host-c") == {CALL_OUT}

    changes = json.loads(ask(db_url, "diff", "--from", earlier, "--to", later, "--format", "json").stdout)
    closed = {
        (c["client_host"] or c["client_address"], c["server_host"], c["server_port"])
        for c in changes
        if c["kind"] == "edge" and c["change"] == "closed"
    }
    assert closed == {("host-c", "host-a", 8080), ("10.77.0.50", "host-a", 8080)}
    assert not [c for c in changes if c["kind"] == "listener"]

    timeline = json.loads(ask(db_url, "history", "--host", "host-a", "--port", "8080", "--format", "json").stdout)
    listeners = [t for t in timeline if t["state"] == "LISTEN"]
    assert [(t["process"], t["valid_to"]) for t in listeners] == [("websvc", None)]
    ended = [t for t in timeline if t["state"] != "LISTEN" and t["valid_to"] is not None]
    assert {t["remote_address"] for t in ended} == {ADDRESSES["host-c"], ADDRESSES["outside"]}

    dot = ask(db_url, "talks", "--format", "dot").stdout
    assert dot.startswith("digraph sockfleet {")
    assert '"host-b/webcli" -> "host-a/websvc" [label="tcp/8080 x2"];' in dot
    assert 'label="host-a"' in dot
