"""The README's first command runs `sockfleet demo`: it must store scans and show the open ports and who talks to whom."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.collector.harness import ENV
from tests.conftest import ROOT


def left_in_session(session: int) -> list[int]:
    """The processes still in ``session``: the demo was started as the leader of a session of its own, so
    its collector and agent are in it, and nothing the test did not start is."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == session:  # state, ppid, pgrp, session
            left.append(int(entry))
    return left


def test_demo_once_shows_this_machines_ports(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        demo = subprocess.Popen(
            [sys.executable, "-m", "sockfleet", "demo", "--once", "--interval", "1s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**ENV, "XDG_DATA_HOME": str(tmp_path)},
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            stdout, stderr = demo.communicate(timeout=120)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, 9)  # its session: the demo, its collector and its agent
                demo.communicate()
        result = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    assert "first scans stored" in result.stderr
    assert (tmp_path / "sockfleet" / "demo.db").exists()  # a database of its own ...
    assert not (tmp_path / "sockfleet" / "sockfleet.db").exists()  # ... never the collector's default one
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["HOST", "PROTO", "STATE"]
    assert any(f"127.0.0.1:{port}" in line and "LISTEN" in line for line in lines)
    # Who talks to whom: at least the agent's own call to the collector, directed by the collector's listener.
    collector_port = re.search(r"collector on 127\.0\.0\.1:(\d+)", result.stderr)
    assert collector_port is not None
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["PROTO", "CLIENT", "SERVER"])
    calls = [line.split() for line in lines[header + 1 :]]
    assert any(c[0] == "tcp" and collector_port.group(1) in c and c[-1] == "listener" for c in calls), lines
    assert not left_in_session(demo.pid)  # the demo stopped its agent


def test_demo_serves_the_page_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "sockfleet", "demo", "--interval", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "XDG_DATA_HOME": str(tmp_path)},
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while "Ctrl-C stops" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "Ctrl-C stops" in seen
    page = re.search(r"the map of who talks to whom: (http://127\.0\.0\.1:\d+)/", seen)
    assert page, seen
    with urllib.request.urlopen(f"{page.group(1)}/api/v1/ports", timeout=60) as reply:
        assert any(row["state"] == "LISTEN" for row in json.loads(reply.read()))
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "LISTEN" in stdout
    assert not left_in_session(proc.pid)
