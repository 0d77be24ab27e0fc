"""The agent's command line: a wrong file is one line at start, and a collector that cannot be reached is
said so in the agent's own words, cause first."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.collector.harness import ENV, sockfleet
from tests.conftest import ROOT, run_sockfleet


def refused_at_start(*args: str) -> str:
    result = run_sockfleet("agent", "run", "--collector", "127.0.0.1:1", "--interval", "1s", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    return result.stderr.strip()


def test_a_token_others_may_read_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("d3c0ffee" * 5 + "\n")
    token.chmod(0o644)
    line = refused_at_start("--insecure", "--token-file", str(token))
    assert line == f"sockfleet: error: --token-file {token}: other users may read it (mode 0644); `chmod 600 {token}`"
    token.write_text("two words\n")
    token.chmod(0o600)
    assert "not a token" in refused_at_start("--insecure", "--token-file", str(token))


def test_a_ca_file_that_is_not_a_certificate_is_refused_at_start(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("this is not a certificate\n")
    assert refused_at_start("--ca", str(ca)).startswith(f"sockfleet: error: --ca {ca}: not a PEM certificate")
    assert "No such file or directory" in refused_at_start("--ca", str(tmp_path / "missing.pem"))


def test_an_unreachable_collector_is_said_so_first(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen(
            sockfleet(
                "agent",
                "run",
                "--collector",
                f"127.0.0.1:{port}",
                "--insecure",
                "--interval",
                "0.5s",
                "--namespaces",
                "current",
                "--host",
                "lonely",
            ),
            stderr=out,
            env=ENV,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 20
            while "retrying" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=20) == 0
    said = log.read_text()
    first = said.splitlines()[0]
    assert f"cannot connect to the collector at 127.0.0.1:{port}: connection refused" in first, said
    assert "RPC already finished" not in said and "Traceback" not in said
    assert not [line for line in said.splitlines() if line[:1] in "EWI" and line[1:5].isdigit()]  # gRPC's own


def test_an_interval_or_a_collector_out_of_range_is_refused_at_start() -> None:
    for interval in ("nan", "inf", "1e400", "0s", "1e-9s", "2d"):
        assert "--interval" in refused_at_start("--insecure", "--interval", interval), interval
    for collector in (":", "host:", "127.0.0.1:abc", "127.0.0.1:99999", "127.0.0.1:0"):
        result = run_sockfleet("agent", "run", "--insecure", "--collector", collector, check=False)
        assert result.returncode == 2 and "is not HOST:PORT" in result.stderr, collector
