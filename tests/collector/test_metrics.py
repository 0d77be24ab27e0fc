"""``--metrics-listen``: the collector's and the agent's metrics, scraped over HTTP while real agents stream to a
real collector, and ``/healthz``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from sockfleet import monitoring
from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.harness import ENV, Agent, Collector, wait_for
from tests.collector.raw import hello, snapshot, stream
from tests.conftest import ROOT, run_sockfleet
from tests.scrape import free_port, get, metric, scrape

APPLIED = 'sockfleet_collector_messages_applied_total{kind="%s"}'
INVALID = 'sockfleet_collector_messages_refused_total{reason="invalid"}'


def test_collector_metrics_while_agents_stream(tmp_path: Path) -> None:
    metrics = free_port()
    collector = Collector(f"sqlite:///{tmp_path / 'm.db'}", 0, "--metrics-listen", f"127.0.0.1:{metrics}")
    agents = [Agent(collector.port, "metrics-a"), Agent(collector.port, "metrics-b")]
    listener = None
    try:
        assert f"metrics on http://127.0.0.1:{metrics}/metrics" in collector.lines[0]
        wait_for(lambda: metric(metrics, "sockfleet_collector_agents_connected") == 2, "two agents connected")
        wait_for(lambda: metric(metrics, 'sockfleet_collector_hosts{status="live"}') == 2, "two live hosts")
        wait_for(lambda: metric(metrics, APPLIED % "heartbeat") + metric(metrics, APPLIED % "delta") >= 2, "deltas")
        first = scrape(metrics)
        assert first[APPLIED % "snapshot"] >= 2  # each agent's first message
        listener = socket.create_server(("127.0.0.1", 0))  # the next scans of both agents carry it: deltas
        wait_for(lambda: metric(metrics, APPLIED % "delta") > first[APPLIED % "delta"], "a delta")
        assert first[INVALID] == 0
        code, _, _ = stream(collector.port, [hello("metrics-bad"), snapshot(epoch=0)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # The refused stream has ended for its client; the collector counts it gone a moment later.
        wait_for(lambda: metric(metrics, "sockfleet_collector_agents_connected") == 2, "the refused stream gone")
        later = scrape(metrics)
        assert later[INVALID] == 1
        assert later['sockfleet_collector_messages_refused_total{reason="rate_limited"}'] == 0
        assert later["sockfleet_collector_apply_seconds_count"] >= sum(
            later[APPLIED % k] for k in ("snapshot", "delta")
        )
        assert later["sockfleet_collector_apply_seconds_sum"] > 0
        assert later["sockfleet_collector_database_errors_total"] == 0
        assert later['sockfleet_collector_hosts{status="live"}'] == 2
        assert later['sockfleet_collector_hosts{status="unknown"}'] == 1  # greeted, never observed
        assert later["sockfleet_collector_agents_connected"] == 2
        assert get(metrics, "/healthz") == (200, "ok\n")
        assert get(metrics, "/nothing")[0] == 404
        agents.pop().stop()
        wait_for(lambda: metric(metrics, "sockfleet_collector_agents_connected") == 1, "one agent left")
    finally:
        for agent in agents:
            agent.stop()
        collector.stop()
        if listener is not None:
            listener.close()
    assert "connected from" in collector.said()


def test_gaps_reported_are_counted(tmp_path: Path) -> None:
    """An agent whose spool is too small for an outage reports the scans it lost; the collector counts them."""
    metrics = free_port()
    db_url = f"sqlite:///{tmp_path / 'g.db'}"
    collector = Collector(db_url, 0, "--metrics-listen", f"127.0.0.1:{metrics}")
    port = collector.port
    agent = Agent(port, "gaps", "--spool", str(tmp_path / "spool"), "--spool-max-bytes", "1")
    restarted = None
    try:
        wait_for(lambda: metric(metrics, APPLIED % "snapshot") == 1, "the first snapshot")
        assert metric(metrics, "sockfleet_collector_gaps_reported_total") == 0
        collector.stop()
        time.sleep(3)  # six scans; a one-byte spool keeps the newest two
        again = free_port()
        restarted = Collector(db_url, port, "--metrics-listen", f"127.0.0.1:{again}")
        wait_for(lambda: metric(again, "sockfleet_collector_gaps_reported_total") >= 1, "the gap reported")
    finally:
        agent.stop()
        (restarted or collector).stop()


def test_agent_metrics_and_healthz(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'a.db'}"
    collector = Collector(db_url)
    port = collector.port
    metrics = free_port()
    log = tmp_path / "agent.log"
    agent = Agent(
        port, "agent-metrics", "--spool", str(tmp_path / "spool"), "--metrics-listen", f"127.0.0.1:{metrics}", log=log
    )
    listener = socket.create_server(("127.0.0.1", 0))
    restarted = None
    try:
        wait_for(lambda: metric(metrics, "sockfleet_agent_messages_acknowledged_total") >= 2, "acknowledged scans")
        first = scrape(metrics)
        assert first['sockfleet_agent_sockets{proto="tcp"}'] >= 1  # at least the test's listener
        assert first["sockfleet_agent_connected"] == 1
        assert first["sockfleet_agent_connects_total"] == 1 and first["sockfleet_agent_reconnects_total"] == 0
        assert first['sockfleet_agent_messages_sent_total{kind="snapshot"}'] == 1
        assert first["sockfleet_agent_last_acknowledged_timestamp_seconds"] > 0
        assert "sockfleet_agent_processes_unreadable" in first and "sockfleet_agent_events_lost_total" in first
        wait_for(
            lambda: metric(metrics, "sockfleet_agent_scan_seconds_count") > first["sockfleet_agent_scan_seconds_count"],
            "another scan",
        )
        assert get(metrics, "/healthz") == (200, "ok\n")
        collector.stop()
        wait_for(lambda: metric(metrics, "sockfleet_agent_spool_records") >= 2, "scans waiting in the spool")
        assert metric(metrics, "sockfleet_agent_spool_bytes") > 0
        assert metric(metrics, "sockfleet_agent_connected") == 0
        wait_for(lambda: get(metrics, "/healthz")[0] == 503, "/healthz to say the collector is away", timeout=60)
        status, body = get(metrics, "/healthz")
        assert status == 503 and "acknowledged nothing" in body and body.count("\n") == 1, body
        restarted = Collector(db_url, port)
        wait_for(lambda: metric(metrics, "sockfleet_agent_spool_records") == 0, "the spool sent", timeout=60)
        wait_for(lambda: get(metrics, "/healthz")[0] == 200, "/healthz healthy again")
        assert metric(metrics, "sockfleet_agent_reconnects_total") >= 1
        assert metric(metrics, "sockfleet_agent_connected") == 1
    finally:
        agent.stop()
        (restarted or collector).stop()
        listener.close()
    assert f"serving metrics on http://127.0.0.1:{metrics}/metrics" in agent.said()


def test_metrics_addresses() -> None:
    assert monitoring.address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert monitoring.address("[::1]:9464") == ("::1", 9464)
    assert monitoring.address(":0") == ("0.0.0.0", 0)
    for wrong in ("9464", "::1:9464", "host:", "host:70000", "host:-1"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            monitoring.address(wrong)


def test_a_broken_health_check_is_unhealthy() -> None:
    def broken() -> str | None:
        raise RuntimeError("no idea")

    endpoint = monitoring.Endpoint("[::1]:0" if socket.has_ipv6 else "127.0.0.1:0", CollectorRegistry(), broken)
    try:
        host = "[::1]" if socket.has_ipv6 else "127.0.0.1"
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://{host}:{endpoint.port}/healthz", timeout=30)
        assert answer.value.code == 503 and answer.value.read() == b"health check failed: no idea\n"
        answer.value.close()
    finally:
        endpoint.close()


def test_a_bad_metrics_address_is_one_line(tmp_path: Path) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    taken = f"127.0.0.1:{busy.getsockname()[1]}"
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    serve = ("collector", "serve", "--insecure", "--allow-anonymous", "--listen", "127.0.0.1:0", "--db", db)
    run = ("agent", "run", "--collector", "127.0.0.1:1", "--insecure", "--host", "bad", "--metrics-listen")
    try:
        for args, wrong, said in (
            ((*serve, "--metrics-listen"), "9464", "is not HOST:PORT"),
            ((*serve, "--metrics-listen"), "::1:9464", "is not HOST:PORT"),
            ((*serve, "--metrics-listen"), taken, "Address already in use"),
            (run, "localhost:http", "is not HOST:PORT"),
            (run, taken, "Address already in use"),
        ):
            result = run_sockfleet(*args, wrong, check=False)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "--metrics-listen" in lines[0] and said in lines[0], result.stderr
    finally:
        busy.close()


def test_a_snapshot_never_loads_prometheus() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sockfleet", "agent", "snapshot", "--namespaces", "current"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        check=True,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "sockfleet.agent.snapshot" in imported
    assert not [name for name in imported if name.startswith(("prometheus_client", "sockfleet.monitoring"))]


def test_deltas_are_counted_by_group(db_url: str) -> None:
    """Each delta goes through group commit: ``sockfleet_collector_group_messages`` counts the groups and, in its
    sum, the deltas they carried (replays and resyncs included, so at least those applied)."""
    metrics = free_port()
    collector = Collector(db_url, 0, "--metrics-listen", f"127.0.0.1:{metrics}")
    agents = [Agent(collector.port, "group-a"), Agent(collector.port, "group-b")]
    try:
        wait_for(lambda: metric(metrics, APPLIED % "heartbeat") + metric(metrics, APPLIED % "delta") >= 4, "deltas")
        found = scrape(metrics)
        deltas = found[APPLIED % "heartbeat"] + found[APPLIED % "delta"]
        assert found["sockfleet_collector_group_messages_sum"] >= deltas
        assert 1 <= found["sockfleet_collector_group_messages_count"] <= found["sockfleet_collector_group_messages_sum"]
        assert found["sockfleet_collector_database_errors_total"] == 0
    finally:
        for agent in agents:
            agent.stop()
        collector.stop()


def test_messages_are_counted_by_the_kind_their_observation_records(tmp_path: Path) -> None:
    """A snapshot, a delta that reports only a change of coverage (a source that failed), and an empty delta:
    the collector's counter by kind says what the observations say (snapshot, delta, heartbeat)."""
    metrics = free_port()
    db_url = f"sqlite:///{tmp_path / 'kinds.db'}"
    collector = Collector(db_url, 0, "--metrics-listen", f"127.0.0.1:{metrics}")
    try:
        moment = datetime.now(UTC).replace(tzinfo=None)
        coverage_only = fleet.delta(2, moment + timedelta(seconds=1))
        coverage_only.coverage.sources.add(source="netlink", netns=fleet.NETNS, ok=False, error="EPERM")
        coverage_only.coverage.namespaces_scanned.append(fleet.NETNS)
        quiet = fleet.delta(3, moment + timedelta(seconds=2))
        messages = [pb.AgentMessage(delta=coverage_only), pb.AgentMessage(delta=quiet)]
        code, details, _ = stream(
            collector.port, [hello("kinds"), snapshot(), *(m.SerializeToString() for m in messages)]
        )
        assert code == grpc.StatusCode.OK, details
        counted = {kind: int(metric(metrics, APPLIED % kind)) for kind in ("snapshot", "delta", "heartbeat")}
    finally:
        collector.stop()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        kinds = [kind for (kind,) in conn.execute(text("SELECT kind FROM observations ORDER BY id"))]
    engine.dispose()
    assert kinds == ["snapshot", "delta", "heartbeat"]
    assert counted == {"snapshot": 1, "delta": 1, "heartbeat": 1}
