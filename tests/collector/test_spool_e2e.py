"""The collector goes away for several intervals, and the agent is killed during the outage:
the history still has every change, at the time it happened, and no hole."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.collector.harness import ENV, Collector, ask, ports, sockfleet, wait_for
from tests.conftest import ROOT

INTERVAL = 0.5


def agent(port: int, spool: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
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
            "spooler",
            "--spool",
            str(spool),
        ),
        stderr=subprocess.DEVNULL,
        env=ENV,
        cwd=ROOT,
    )


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_outage_and_agent_kill_leave_no_hole(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'spool.db'}"
    collector = Collector(db_url)
    port = collector.port
    first = agent(port, tmp_path / "spool")
    kept = socket.create_server(("127.0.0.1", 0))
    early = socket.create_server(("127.0.0.1", 0))
    early_port = early.getsockname()[1]
    try:
        wait_for(lambda: bool(ports(db_url, "--port", str(early_port))), "the first snapshot")
        collector.stop(signal.SIGKILL)
        outage_started = now()
        time.sleep(1.5)
        late = socket.create_server(("127.0.0.1", 0))  # opened while the collector is away
        opened = now()
        time.sleep(1.5)
        early.close()  # closed while the collector is away
        closed = now()
        time.sleep(1.5)
        first.send_signal(signal.SIGKILL)  # the agent dies too; its spool is on disk
        first.wait(timeout=10)
        assert (tmp_path / "spool" / "base.snap").exists()
        second = agent(port, tmp_path / "spool")
        time.sleep(1)
        restarted = Collector(db_url, port)
        outage_ended = now()
        try:
            wait_for(lambda: bool(ports(db_url, "--port", str(late.getsockname()[1]))), "the spooled scans")
            wait_for(lambda: not (tmp_path / "spool" / "base.snap").exists(), "the spool to drain")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=20)
            restarted.stop()
        history = json.loads(ask(db_url, "history", "--host", "spooler", "--format", "json").stdout)
        late_row = next(r for r in history if r["local_port"] == late.getsockname()[1])
        early_row = next(r for r in history if r["local_port"] == early_port and r["state"] == "LISTEN")
        late.close()
    finally:
        kept.close()
        if first.poll() is None:
            first.kill()
    # Each change is stored at the scan that saw it: within one interval (and a second of slack).
    slack = INTERVAL + 1.0
    assert 0 <= (datetime.fromisoformat(late_row["valid_from"].rstrip("Z")) - opened).total_seconds() <= slack
    assert 0 <= (datetime.fromisoformat(early_row["valid_to"].rstrip("Z")) - closed).total_seconds() <= slack
    # No hole: scans were stored for the whole outage, taken while the collector was away.
    engine = create_engine(db_url)
    with engine.connect() as conn:
        taken = [
            datetime.fromisoformat(str(t))
            for (t,) in conn.execute(
                text(
                    "SELECT o.taken_at FROM observations o JOIN hosts h ON h.id = o.host_ref "
                    "WHERE h.name = 'spooler' ORDER BY o.taken_at"
                )
            )
        ]
    engine.dispose()
    during = [t for t in taken if outage_started < t < outage_ended]
    assert len(during) >= 6
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(taken)]
    assert max(steps) < 3 * INTERVAL + 2.5  # the agent's own restart is the longest pause


def test_sigterm_writes_what_waits(tmp_path: Path) -> None:
    """An agent stopped while the collector is away keeps its scans on disk for the next run."""
    proc = agent(1, tmp_path / "spool")  # port 1: nothing listens there
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    from sockfleet.agent.spool import Spool

    waiting = Spool(str(tmp_path / "spool"))
    assert len(waiting) >= 2
    assert waiting.head_snapshot().sockets  # the first waiting scan, in full
