"""A host never goes blind without saying so: real agents and a real collector, each fault on purpose.

A process with a huge command line, a scan dated in the future, a scan the collector refuses, an outage
of a hundred intervals, a host that stops reporting: each costs at most one scan, is recorded, and is
never reported as a clean host.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from sockfleet.agent import convert as agent_convert
from sockfleet.agent.spool import Spool
from sockfleet.v1 import fleet_pb2 as pb
from tests.benchmarks import bench_big_host
from tests.collector import fleet
from tests.collector.harness import ENV, Agent, Collector, ask, ports, sockfleet, wait_for
from tests.collector.network import SWITCH, Network
from tests.conftest import ROOT


def hosts(db_url: str) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in json.loads(ask(db_url, "hosts", "--format", "json").stdout)}


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def sqlite_collector(tmp_path: Path) -> Iterator[Collector]:
    running = Collector(f"sqlite:///{tmp_path / 'blind.db'}")
    yield running
    if running.proc.poll() is None:
        running.stop()


def test_a_huge_command_line_is_shortened_and_the_host_stays_live(collector: Collector, tmp_path: Path) -> None:
    program = (
        "import socket, sys; s = socket.create_server(('127.0.0.1', 0)); "
        "print(s.getsockname()[1], flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", program, "x" * 5000], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdin is not None
    port = int(holder.stdout.readline())
    agent = Agent(collector.port, "long-cmdline", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: bool(ports(collector.db_url, "--port", str(port))), "the listener of the long command line")
        [row] = ports(collector.db_url, "--port", str(port))
        assert len(row["cmdline"]) == 4096
        assert row["cmdline"].endswith(" chars]") and "…[+" in row["cmdline"]
        assert row["cmdline"].startswith(f"{sys.executable} -c ")
        assert hosts(collector.db_url)["long-cmdline"]["status"] == "live"
    finally:
        agent.stop()
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()


def test_a_scan_the_collector_refuses_costs_that_scan_only(sqlite_collector: Collector, tmp_path: Path) -> None:
    """A scan dated a day ahead waits in the spool (the host's clock was wrong when it was taken): the
    collector refuses it, the agent drops it, records the gap and goes on with its next scan."""
    spool_dir = tmp_path / "spool"
    poisoned = Spool(str(spool_dir))
    key: agent_convert.Key = (1, pb.PROTO_TCP, pb.FAMILY_INET, pb.SOCK_TYPE_STREAM, 7, "0.0.0.0", 7301, "", 0, "")
    entry = agent_convert.Entry(agent_convert.Comparable(pb.STATE_LISTEN, 0, 0, "root", 1, "ghost", "ghost", 1), 0, 0)
    tomorrow = int((datetime.now(UTC) + timedelta(hours=23)).timestamp() * 1e6)
    poisoned.add({key: entry}, None, tomorrow, pb.Coverage(namespaces_scanned=[1]))
    poisoned.persist()
    del poisoned  # the folder is the agent's from here on
    gc.collect()
    db_url = sqlite_collector.db_url
    agent = Agent(sqlite_collector.port, "poisoned", "--spool", str(spool_dir), log=tmp_path / "agent.log")
    try:
        wait_for(lambda: hosts(db_url).get("poisoned", {}).get("status") == "live", "the host to be live")
        wait_for(lambda: not (spool_dir / "base.snap").exists(), "the spool to drain")
        host = hosts(db_url)["poisoned"]
        assert "ahead of the collector's clock" in host["last_refusal"]
        assert "ahead of the collector's clock" in ask(db_url, "hosts").stdout  # the table says it too
        assert host["gaps"] >= 1
        assert not ports(db_url, "--port", "7301")  # nothing of the refused scan is stored
        assert "refused the scan taken at" in agent.said()
    finally:
        assert agent.stop() == 0
    engine = create_engine(db_url)
    with engine.connect() as conn:
        coverage = conn.execute(text("SELECT coverage FROM observations WHERE gaps > 0")).scalars().first()
    engine.dispose()
    assert coverage is not None
    assert any("refused by the collector" in gap["reason"] for gap in json.loads(coverage)["gaps"])


def stream(port: int, messages: list[pb.AgentMessage]) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/sockfleet.v1.Collector/Stream",
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(call(iter(messages), timeout=20))
    return caught.value


def test_a_scan_dated_in_the_future_is_refused_with_the_skew_named(collector: Collector) -> None:
    ahead = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=23)
    hello = fleet.hello("fast-clock")
    hello.sent_at_us = fleet.us(ahead)
    error = stream(
        collector.port,
        [pb.AgentMessage(hello=hello), pb.AgentMessage(snapshot=fleet.snapshot(1, ahead, [fleet.tcp_listener(80)]))],
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(error.details())
    assert "snapshot.taken_at_us: the scan is dated 82,8" in details
    assert "ahead of the collector's clock (tolerance 120 s)" in details
    metadata: Any = error.trailing_metadata()
    assert ("sockfleet-refused", "message") in [tuple(item) for item in metadata]
    host = hosts(collector.db_url)["fast-clock"]
    assert 82_700 < host["clock_skew"] < 82_900
    assert "ahead of the collector's clock" in host["last_refusal"]
    assert host["sockets"] == 0 and host["status"] == "stale"
    assert "clock 82,8" in ask(collector.db_url, "hosts").stdout


def test_an_outage_of_a_hundred_intervals_catches_up_at_once(sqlite_collector: Collector, tmp_path: Path) -> None:
    db_url, port = sqlite_collector.db_url, sqlite_collector.port
    interval = 0.05
    agent = Agent(
        port, "catching-up", "--spool", str(tmp_path / "spool"), interval=f"{interval}s", log=tmp_path / "agent.log"
    )
    try:
        wait_for(lambda: hosts(db_url).get("catching-up", {}).get("status") == "live", "the first scans")
        sqlite_collector.stop(signal.SIGKILL)
        down = now()
        time.sleep(100 * interval)
        up = now()
        restarted = Collector(db_url, port)
        try:
            # A scan takes some time of its own: about 70 scans in the 100 intervals on a quiet machine, fewer on a
            # busy one.  The agent says how many were waiting when it reconnected: every one of them is stored.
            def waiting() -> int | None:
                said = re.findall(r"connected to the collector at \S+; (\d+) scans waiting", agent.said())
                return int(said[1]) if len(said) > 1 else None

            wait_for(lambda: waiting() is not None, "the agent's reconnection", timeout=60)
            spooled = waiting()
            assert spooled is not None and spooled >= 20, agent.said()
            wait_for(
                lambda: (
                    (tmp_path / "spool" / "base.snap").exists() is False
                    and _stored_between(db_url, down, now() + timedelta(hours=1)) >= spooled
                ),
                "the outage's scans",
                timeout=60,
            )
        finally:
            restarted.stop()
    finally:
        agent.stop()
    assert "RESOURCE_EXHAUSTED" not in agent.said() and "per second" not in agent.said()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        received = [
            datetime.fromisoformat(str(r))
            for r in conn.execute(
                text(
                    "SELECT received_at FROM observations WHERE taken_at > :down AND taken_at < :up ORDER BY received_at"
                ),
                {"down": down.isoformat(" "), "up": up.isoformat(" ")},
            ).scalars()
        ]
    engine.dispose()
    # Once reconnected, the agent replays the whole outage as fast as the collector acknowledges.
    assert (received[-1] - received[0]).total_seconds() < 40 * interval


def _stored_between(db_url: str, start: datetime, end: datetime) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM observations WHERE taken_at > :a AND taken_at < :b"),
            {"a": start.isoformat(" "), "b": end.isoformat(" ")},
        ).scalar_one()
    engine.dispose()
    return int(count)


def test_audit_fails_when_a_host_stops_reporting(collector: Collector, tmp_path: Path) -> None:
    db_url = collector.db_url
    agent = Agent(collector.port, "goes-quiet", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: hosts(db_url).get("goes-quiet", {}).get("status") == "live", "the host to be live")
        assert ask(db_url, "audit", check=False).returncode == 0
    finally:
        agent.stop()
    wait_for(lambda: hosts(db_url)["goes-quiet"]["status"] == "stale", "three silent intervals")
    failing = ask(db_url, "audit", "--format", "json", check=False)
    assert failing.returncode == 3, failing.stderr
    [finding] = [f for f in json.loads(failing.stdout) if f["finding"] == "not observed"]
    assert (finding["severity"], finding["host"]) == ("unknown", "goes-quiet")
    assert "last report" in finding["detail"]
    table = ask(db_url, "audit", check=False)
    assert table.returncode == 3
    assert "0 violation(s), 1 host(s) not observed" in table.stdout
    relaxed = ask(db_url, "audit", "--allow-unobserved", check=False)
    assert relaxed.returncode == 0
    gone = ask(db_url, "audit", "--lookback", "1s", check=False)  # a host gone longer than the lookback is retired
    assert gone.returncode == 0


CHURN = """
import socket, sys, time
# Every tenth of a second, 50 new UDP sockets in place of the last 50: each scan then carries 100 changes,
# and each socket this process's long command line, so that a small spool fills within a few scans.
held = []
print("ready", flush=True)
while True:
    for sock in held:
        sock.close()
    held = []
    for _ in range(50):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    time.sleep(0.1)
"""


@pytest.mark.root
def test_a_full_spool_disk_costs_no_agent(tmp_path: Path) -> None:
    """The spool on a 1 MiB tmpfs through an outage: the agent survives the full disk, restarts on it,
    records the gap, and recovers once the collector is back."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a tmpfs and a network namespace need root")
    namespace = f"sf-disk-{uuid.uuid4().hex[:6]}"
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    procs: list[subprocess.Popen[Any]] = []
    logs: list[Any] = []
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)

        def inside(*command: str, log: Path | None = None) -> subprocess.Popen[Any]:
            out = log.open("a") if log is not None else subprocess.DEVNULL
            if log is not None:
                logs.append(out)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
                env=ENV,
                cwd=ROOT,
            )
            procs.append(proc)
            return proc

        db_url = f"sqlite:///{tmp_path / 'disk.db'}"
        serve = sockfleet(
            "collector", "serve", "--insecure", "--allow-anonymous", "--listen", "127.0.0.1:7071", "--db", db_url
        )
        collector = inside(*serve, log=tmp_path / "collector.log")
        wait_for(lambda: "listening on" in (tmp_path / "collector.log").read_text(), "the collector")
        churn = inside(sys.executable, "-c", CHURN, "x" * 2000)
        assert churn.stdout is not None and churn.stdout.readline().strip() == b"ready"
        run = sockfleet(
            "agent",
            "run",
            "--collector",
            "127.0.0.1:7071",
            "--insecure",
            "--interval",
            "0.2s",
            "--namespaces",
            "current",
            "--host",
            "small-disk",
            "--spool",
            str(disk / "spool"),
        )
        log = tmp_path / "agent.log"
        agent = inside(*run, log=log)
        wait_for(lambda: hosts(db_url).get("small-disk", {}).get("status") == "live", "the host to be live")
        collector.send_signal(signal.SIGKILL)
        collector.wait(timeout=10)
        wait_for(lambda: "cannot write to" in log.read_text(), "the spool's disk to fill", timeout=60)
        time.sleep(1)
        assert agent.poll() is None  # the agent lives on a full disk
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        restarted = inside(*run, log=log)  # starts on the full disk
        wait_for(lambda: "waiting from an earlier run" in log.read_text(), "the restarted agent to load its spool")
        time.sleep(1)
        assert restarted.poll() is None
        inside(*serve, log=tmp_path / "collector.log")
        wait_for(lambda: not (disk / "spool" / "base.snap").exists(), "the spool to drain", timeout=60)
        wait_for(lambda: hosts(db_url)["small-disk"]["status"] == "live", "the host to be live again")
        assert hosts(db_url)["small-disk"]["gaps"] >= 1  # the restart's gap is recorded
        assert "Traceback" not in log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        for file in logs:
            file.close()
        subprocess.run(["umount", str(disk)], check=False)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


@pytest.mark.root
def test_an_address_added_later_resolves_to_its_host(network: Network, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'addresses.db'}"
    collector = network.run(
        network.switch,
        *sockfleet(
            "collector", "serve", "--insecure", "--allow-anonymous", "--listen", f"{SWITCH}:7052", "--db", db_url
        ),
        ready=False,
    )
    assert collector.stderr is not None and "listening on" in collector.stderr.readline()
    for host in ("host-a", "host-b"):
        network.run(
            network.hosts[host],
            *sockfleet(
                "agent",
                "run",
                "--collector",
                f"{SWITCH}:7052",
                "--insecure",
                "--interval",
                "0.5s",
                "--namespaces",
                "current",
                "--host",
                host,
            ),
            ready=False,
        )
    wait_for(lambda: {"host-a", "host-b"} <= set(hosts(db_url)), "both hosts")
    # A failover address on host-a, after its agent started; a service there, and host-b calling it.
    subprocess.run(["ip", "-n", network.hosts["host-a"], "addr", "add", "10.77.0.11/24", "dev", "eth0"], check=True)
    network.process("host-a", "failsvc", "tcp-listen", "0.0.0.0", "8443")
    network.process("host-b", "failcli", "tcp-connect", "10.77.0.11", "8443", "1")

    def edge() -> list[dict[str, Any]]:
        rows = json.loads(ask(db_url, "talks", "--format", "json", "--port", "8443").stdout)
        return [r for r in rows if r["client_process"] == "failcli"]

    wait_for(lambda: bool(edge()) and edge()[0]["server_host"] is not None, "the call to the new address", timeout=60)
    [row] = edge()
    assert (row["client_host"], row["server_host"], row["server_process"]) == ("host-b", "host-a", "failsvc")
    assert "10.77.0.11" in hosts(db_url)["host-a"]["addresses"].split()


def test_a_large_host_resyncing_does_not_hold_up_the_others(tmp_path: Path) -> None:
    """100,000 sockets in parts beside a small host's heartbeats (the benchmark runs a million)."""
    run = bench_big_host.measure(100_000, tmp_path)
    assert run["acks"] >= 20  # the small host kept streaming while the large snapshot was applied
    # Its heartbeats waited for a step at most, never for the whole snapshot (which one transaction would make
    # them do): compared with the snapshot's own length, not with a time that a loaded machine may pass.
    assert run["max"] < run["seconds"] / 4, run
    assert run["p95"] < run["seconds"] / 20, run


def test_a_clock_slightly_ahead_or_far_behind_still_dates_scans_now(collector: Collector) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    for name, clock in (("ahead-90s", now + timedelta(seconds=90)), ("behind-1h", now - timedelta(hours=1))):
        message = fleet.hello(name, interval=15)
        message.sent_at_us = fleet.us(clock)
        replies = list(
            _stream(
                collector.port,
                [
                    pb.AgentMessage(hello=message),
                    pb.AgentMessage(snapshot=fleet.snapshot(1, clock, [fleet.tcp_listener(7777)])),
                ],
            )
        )
        assert replies[0].HasField("ack")
    seen = hosts(collector.db_url)
    assert seen["ahead-90s"]["status"] == seen["behind-1h"]["status"] == "live"
    assert {row["host"] for row in ports(collector.db_url, "--port", "7777")} == {"ahead-90s", "behind-1h"}
    assert -3700 < seen["behind-1h"]["clock_skew"] < -3500
    assert ask(collector.db_url, "audit", "--allow-unobserved", check=False).returncode == 0


def test_audit_counts_a_host_that_connected_but_was_never_stored(collector: Collector) -> None:
    ahead = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=5)
    stream(
        collector.port,
        [
            pb.AgentMessage(hello=fleet.hello("never-stored")),
            pb.AgentMessage(snapshot=fleet.snapshot(1, ahead, [fleet.tcp_listener(80)])),
        ],
    )
    failing = ask(collector.db_url, "audit", "--format", "json", check=False)
    assert failing.returncode == 3
    [finding] = [f for f in json.loads(failing.stdout) if f["host"] == "never-stored"]
    assert "no scan stored since" in finding["detail"]


def _stream(port: int, messages: list[pb.AgentMessage]) -> list[pb.CollectorMessage]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/sockfleet.v1.Collector/Stream",
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        return list(call(iter(messages), timeout=20))
