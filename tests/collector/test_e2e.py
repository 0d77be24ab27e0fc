"""A real collector and a real agent, as processes, with sockets the test opens and closes."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import create_engine, text

from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.collector import fleet
from tests.collector.harness import Agent, Collector, ask, ports, stamp, wait_for


def _observed(db_url: str) -> list[tuple[str, int]]:
    """Each stored observation's kind and the number of sockets it changed, in order."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT kind, added + removed + changed FROM observations ORDER BY id"))
            return [(kind, int(changed)) for kind, changed in rows]
    finally:
        engine.dispose()


def test_ports_before_between_and_after(collector: Collector) -> None:
    db_url = collector.db_url
    agent = Agent(collector.port, "e2e-host")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        wait_for(lambda: bool(ports(collector.db_url, "--host", "e2e-host")), "the first snapshot")
        before = stamp()
        time.sleep(1)
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        udp.bind(("127.0.0.1", 0))
        udp_port = udp.getsockname()[1]
        wait_for(lambda: bool(ports(db_url, "--port", str(port))), f"port {port} to be stored")
        wait_for(lambda: bool(ports(db_url, "--port", str(udp_port))), f"udp port {udp_port} to be stored")
        time.sleep(1)
        between = stamp()
        time.sleep(1)
        listener.close()
        wait_for(lambda: not ports(db_url, "--port", str(port)), f"port {port} to close")
        time.sleep(1)
        after = stamp()
        [row] = ports(db_url, "--port", str(port), "--at", between)
        assert (row["host"], row["proto"], row["state"], row["local_address"]) == (
            "e2e-host",
            "tcp",
            "LISTEN",
            "127.0.0.1",
        )
        assert row["pid"] == os.getpid()
        assert ports(db_url, "--port", str(port), "--at", before) == []
        assert ports(db_url, "--port", str(port), "--at", after) == []
        assert [r["proto"] for r in ports(db_url, "--port", str(udp_port), "--at", after)] == ["udp"]
        sockets = json.loads(ask(db_url, "sockets", "--format", "json", "--proto", "tcp", "--at", between).stdout)
        assert any(s["local_port"] == port and s["state"] == "LISTEN" for s in sockets)
        hosts = json.loads(ask(db_url, "hosts", "--format", "json").stdout)
        assert [(h["host"], h["status"]) for h in hosts] == [("e2e-host", "live")]
        assert "127.0.0.1" in hosts[0]["addresses"].split()
        # A scan that finds nothing changed is stored as a heartbeat (no coverage, no socket row).  The agent
        # scans this machine's sockets every half second, and other tests change them: wait for a quiet one.
        wait_for(lambda: any(kind == "heartbeat" for kind, _ in _observed(db_url)), "a quiet scan, as a heartbeat")
        assert all(changed == 0 for kind, changed in _observed(db_url) if kind == "heartbeat")
    finally:
        udp.close()
        agent.stop()


def test_collector_restart_loses_nothing(collector: Collector) -> None:
    from tests.collector.truth import Truth

    db_url, port = collector.db_url, collector.port
    agent = Agent(port, "restart-host")
    truth = Truth()
    try:
        wait_for(lambda: "restart-host" in ask(db_url, "hosts").stdout, "the first snapshot")
        listener = truth.open()
        wait_for(lambda: bool(ports(db_url, "--port", str(listener))), "the listener")
        collector.stop(signal.SIGKILL)  # killed while the agent streams every half second
        second = truth.open()
        time.sleep(1)
        truth.close(listener)
        time.sleep(0.5)  # the agent keeps scanning while the collector is down
        restarted = Collector(db_url, port)
        try:
            wait_for(lambda: bool(ports(db_url, "--port", str(second))), "reconnection")
            wait_for(lambda: not ports(db_url, "--port", str(listener)), "the closed listener")
            truth.check(db_url, "restart-host", interval=0.5)  # one life each: nothing lost, nothing doubled
        finally:
            restarted.stop()
    finally:
        agent.stop()
        truth.close_all()


def stream(port: int, messages: list[pb.AgentMessage]) -> list[pb.CollectorMessage]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return list(pb_grpc.CollectorStub(channel).Stream(iter(messages), timeout=20))  # type: ignore[no-untyped-call]


def test_malformed_message_gets_invalid_argument_and_nothing_is_stored(collector: Collector) -> None:
    hello = pb.AgentMessage(hello=fleet.hello("bad-host"))
    bad = fleet.tcp_listener(80)
    bad.key.local_port = 70000
    now = datetime.now(UTC).replace(tzinfo=None)
    with pytest.raises(grpc.RpcError) as caught:
        stream(collector.port, [hello, pb.AgentMessage(snapshot=fleet.snapshot(1, now, [bad]))])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "snapshot.sockets[0].key.local_port: 70000 is not a port" in str(caught.value.details())
    with pytest.raises(grpc.RpcError) as no_hello:
        stream(collector.port, [pb.AgentMessage(snapshot=fleet.snapshot(1, now, []))])
    assert no_hello.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    good = stream(collector.port, [hello, pb.AgentMessage(snapshot=fleet.snapshot(1, now, [fleet.tcp_listener(80)]))])
    assert [m.WhichOneof("body") for m in good] == ["ack"]
    rows = ports(collector.db_url, "--host", "bad-host")
    assert [(r["local_port"], r["process"]) for r in rows] == [(80, "nginx")]


def test_cli_errors_are_one_line(collector: Collector) -> None:
    for args, message in [
        (("ports", "--at", "yesterday"), "sockfleet: error: --at: 'yesterday' is not a time"),
        (("ports", "--host", "nowhere"), "sockfleet: error: --host nowhere: no such host"),
        (
            ("ports", "--at", "2999-01-01T00:00:00Z"),
            "sockfleet: error: --at 2999-01-01T00:00:00Z: that is in the future",
        ),
        (("ports", "--at", "2026-01-01T00:00:00"), "has no time zone"),
    ]:
        result = ask(collector.db_url, *args, check=False)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr
    bad_port = ask(collector.db_url, "ports", "--port", "70000", check=False)
    assert bad_port.returncode == 2
    assert "70000 is not a port" in bad_port.stderr
