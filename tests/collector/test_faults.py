"""Faults with ground truth: the network between a host and the collector cut for several intervals,
and a spool too small for an outage.  Afterwards the stored history equals what the test did, within
one scan interval at each edge, with no duplicate and no hole except a recorded one."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.collector.harness import ENV, Collector, ask, ports, sockfleet, wait_for
from tests.collector.network import ADDRESSES, SWITCH, Network
from tests.collector.truth import Truth, recorded_gaps
from tests.conftest import ROOT

INTERVAL = 0.5


def observation_steps(db_url: str, host: str) -> list[float]:
    """Seconds between the scan times of a host's successive stored observations."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        taken = [
            datetime.fromisoformat(str(row[0]))
            for row in conn.execute(
                text(
                    "SELECT o.taken_at FROM observations o JOIN hosts h ON h.id = o.host_ref WHERE h.name = :h "
                    "ORDER BY o.taken_at"
                ),
                {"h": host},
            )
        ]
    engine.dispose()
    return [(b - a).total_seconds() for a, b in itertools.pairwise(taken)]


@pytest.mark.root
def test_network_cut_then_restored(network: Network, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cut.db'}"
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
        f"{SWITCH}:7060",
        "--db",
        db_url,
        ready=False,
    )
    assert collector.stderr is not None
    assert "listening on" in collector.stderr.readline()
    host = network.hosts["host-a"]
    network.run(
        host,
        sys.executable,
        "-m",
        "sockfleet",
        "agent",
        "run",
        "--collector",
        f"{SWITCH}:7060",
        "--insecure",
        "--interval",
        f"{INTERVAL}s",
        "--namespaces",
        "current",
        "--host",
        "host-a",
        "--spool",
        str(tmp_path / "spool"),
        ready=False,
    )
    truth = Truth(ADDRESSES["host-a"], namespace=f"/run/netns/{host}")
    before = truth.open()
    closing = truth.open()
    wait_for(lambda: len(ports(db_url, "--host", "host-a")) >= 2, "the first snapshot")
    subprocess.run(["ip", "-n", host, "link", "set", "eth0", "down"], check=True)
    time.sleep(1.5)
    during = truth.open()
    truth.close(closing)
    time.sleep(2.5)  # the cut lasts ten scan intervals
    subprocess.run(["ip", "-n", host, "link", "set", "eth0", "up"], check=True)
    wait_for(lambda: bool(ports(db_url, "--port", str(during))), "the scans taken during the cut", timeout=60)
    time.sleep(1.5)
    truth.check(db_url, "host-a", INTERVAL)
    assert max(observation_steps(db_url, "host-a")) < 3 * INTERVAL + 1.5  # no hole: the cut lasted 4 s
    assert before in {r["local_port"] for r in ports(db_url, "--host", "host-a")}
    truth.close_all()


def test_spool_smaller_than_the_outage(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'small.db'}"
    collector = Collector(db_url)
    port = collector.port
    agent = subprocess.Popen(
        sockfleet(
            "agent",
            "run",
            "--collector",
            f"127.0.0.1:{port}",
            "--insecure",
            "--interval",
            f"{INTERVAL}s",
            "--namespaces",
            "current",
            "--host",
            "small",
            "--spool",
            str(tmp_path / "spool"),
            "--spool-max-bytes",
            "1",
        ),
        stderr=subprocess.DEVNULL,
        env=ENV,
        cwd=ROOT,
    )
    truth = Truth()
    try:
        wait_for(lambda: "small" in ask(db_url, "hosts").stdout, "the first snapshot")
        kept = truth.open()  # the truth starts once the host is observed: before that, nothing can be known
        wait_for(lambda: bool(ports(db_url, "--port", str(kept))), "the listener")
        collector.stop(signal.SIGKILL)
        time.sleep(3)  # six scans; a one-byte spool keeps only the newest two
        late = truth.open()
        time.sleep(1)
        restarted = Collector(db_url, port)
        try:
            wait_for(lambda: bool(ports(db_url, "--port", str(late))), "the newest scans")
            hosts = json.loads(ask(db_url, "hosts", "--format", "json").stdout)
            assert hosts[0]["gaps"] >= 1  # the dropped scans are visible
            steps = observation_steps(db_url, "small")
            assert max(steps) > 2  # the hole the spool could not fill ...
            engine = create_engine(db_url)
            with engine.connect() as conn:
                recorded = conn.execute(text("SELECT count(*) FROM observations WHERE coverage LIKE '%spool full%'"))
                assert recorded.scalar_one() >= 1  # ... is recorded as missing coverage
            engine.dispose()
        finally:
            restarted.stop()
        gaps = recorded_gaps(db_url, "small")
        assert gaps  # the dropped scans are recorded
        truth.check(db_url, "small", INTERVAL, gaps=gaps)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        truth.close_all()
