"""Connections that open and close between two scans reach ``talks`` over a window, with their bytes, on SQLite
and PostgreSQL: a real agent listening to socket-destroy events, a real collector, real connections."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.collector.harness import Agent, Collector, ask, ports, stamp, wait_for
from tests.collector.network import ADDRESSES, SWITCH, Network
from tests.traffic import exchange

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent reads every process's sockets as root")


def edges_to(db_url: str, port: int, since: str, *extra: str) -> list[dict[str, Any]]:
    found = json.loads(ask(db_url, "talks", "--since", since, "--port", str(port), "--format", "json", *extra).stdout)
    return [e for e in found if e["server_port"] == port]


def diff(db_url: str, since: str, port: int, *extra: str) -> list[dict[str, Any]]:
    rows = json.loads(ask(db_url, "diff", "--from", since, "--format", "json", *extra).stdout)
    return [r for r in rows if r["kind"] == "edge" and r["server_port"] == port]


def test_short_connections_between_scans_are_counted_once_with_their_bytes(
    collector: Collector, tmp_path: Path
) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    agent = Agent(collector.port, "events-host", interval="1s", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: any(p["local_port"] == port for p in ports(collector.db_url)), "the listener in a scan")
        since = stamp()
        count, request, answer = 20, 10_000, 30_000
        exchange(server, count, request, answer)

        def counted() -> bool:
            return bool(sum(e["connections"] for e in edges_to(collector.db_url, port, since)) >= count)

        try:
            wait_for(counted, "the closed connections in talks", timeout=30)
        except BaseException:
            print(
                agent.said(),
                collector.said(),
                ask(collector.db_url, "talks", "--since", since, "--format", "json").stdout,
            )
            raise
        found = edges_to(collector.db_url, port, since)
        between, plain_diff = diff(collector.db_url, since, port, "--short-lived"), diff(collector.db_url, since, port)
    finally:
        agent.stop()
        server.close()
    # Both ends are on this host: each connection was reported by its client's end and its server's end,
    # and counts once.
    assert sum(e["connections"] for e in found) == count
    assert sum(e["short_lived"] for e in found) >= count - 2  # a scan may catch one or two of them open
    assert all(e["server_host"] == "events-host" and e["client_host"] == "events-host" for e in found)
    client_bytes = sum(e["client_bytes"] or 0 for e in found)
    server_bytes = sum(e["server_bytes"] or 0 for e in found)
    assert client_bytes == pytest.approx(count * request, rel=0.01)
    assert server_bytes == pytest.approx(count * answer, rel=0.01)
    dot = ask(collector.db_url, "talks", "--since", since, "--port", str(port), "--format", "dot").stdout
    assert "short-lived" in dot
    assert {r["change"] for r in between} == {"opened and closed"}
    assert sum(r["short_lived"] for r in between) >= count - 2
    assert plain_diff == []  # open at neither moment: only --short-lived shows them


def test_an_agent_without_events_reports_no_short_lived_connections(collector: Collector) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    agent = Agent(collector.port, "quiet-host", "--no-events", interval="1s")
    try:
        wait_for(lambda: any(p["local_port"] == port for p in ports(collector.db_url)), "the listener in a scan")
        since = stamp()
        exchange(server, 10, 100, 100)
        marker = socket.create_server(("127.0.0.1", 0))  # a later scan: the interval of the exchange is stored
        try:
            mark = marker.getsockname()[1]
            wait_for(lambda: any(p["local_port"] == mark for p in ports(collector.db_url)), "a later scan")
        finally:
            marker.close()
        found = edges_to(collector.db_url, port, since)
    finally:
        agent.stop()
        server.close()
    assert sum(e["short_lived"] for e in found) == 0
    assert all(e["client_bytes"] is None for e in found)


def test_a_connection_between_two_hosts_with_agents_counts_once(network: Network, tmp_path: Path) -> None:
    """host-b calls host-a's service 15 times between two scans; both hosts' agents see every connection
    close, and each counts once, with the bytes host-b sent."""
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    serve = ("collector", "serve", "--insecure", "--allow-anonymous", "--listen", f"{SWITCH}:7051", "--db", db_url)
    collector = network.run(network.switch, sys.executable, "-m", "sockfleet", *serve, ready=False)
    assert collector.stderr is not None
    assert "listening on" in collector.stderr.readline()
    for host in ("host-a", "host-b"):
        run = ("agent", "run", "--collector", f"{SWITCH}:7051", "--insecure", "--interval", "1s")
        network.run(network.hosts[host], sys.executable, "-m", "sockfleet", *run, "--namespaces", "current",
                    "--host", host, ready=False)  # fmt: skip
    network.process("host-a", "websvc", "tcp-listen", "0.0.0.0", "8080")
    wait_for(lambda: any(p["host"] == "host-a" and p["local_port"] == 8080 for p in ports(db_url)), "the listener")

    def hosts() -> set[str]:
        return {h["host"] for h in json.loads(ask(db_url, "hosts", "--format", "json").stdout)}

    wait_for(lambda: hosts() == {"host-a", "host-b"}, "both hosts")
    since = stamp()
    count, size = 15, 20_000
    network.process("host-b", "burst", "tcp-burst", ADDRESSES["host-a"], "8080", str(count), str(size))

    def calls() -> list[dict[str, Any]]:
        return [e for e in edges_to(db_url, 8080, since) if e["client_host"] == "host-b"]

    wait_for(lambda: sum(e["connections"] for e in calls()) >= count, "the calls in talks", timeout=30)
    time.sleep(2.5)  # both agents' next scans: nothing more may be counted
    found = calls()
    assert sum(e["connections"] for e in found) == count
    assert {e["server_host"] for e in found} == {"host-a"}
    assert {e["server_process"] for e in found} == {"websvc"}
    assert sum(e["client_bytes"] or 0 for e in found) == pytest.approx(count * size, rel=0.01)


def test_bytes_of_a_connection_open_across_scans_reach_its_edge(collector: Collector) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    agent = Agent(collector.port, "busy-host", interval="1s")
    try:
        wait_for(lambda: any(p["local_port"] == port for p in ports(collector.db_url)), "the listener in a scan")
        since = stamp()
        time.sleep(1.5)  # a scan reads the connection's bytes so far: what follows is counted from there
        client.sendall(b"u" * 40_000)
        got = 0
        while got < 40_000:
            got += len(accepted.recv(65536))

        def moved() -> int:
            return sum(e["client_bytes"] or 0 for e in edges_to(collector.db_url, port, since))

        wait_for(lambda: moved() >= 40_000, "the bytes in talks", timeout=30)
        found = edges_to(collector.db_url, port, since)
    finally:
        agent.stop()
        client.close()
        accepted.close()
        server.close()
    assert [(e["connections"], e["short_lived"]) for e in found] == [(1, 0)]  # one connection, seen by scans
    assert found[0]["client_bytes"] == 40_000
