"""Fixtures shared by every test: a live socket zoo, and the ``sockfleet`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Zoo:
    """A running ``tests/socket_zoo.py``: its pid, its pre-fork worker's pid, and what it opened."""

    pid: int
    worker: int
    sockets: dict[str, dict[str, Any]]


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[Zoo]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.socket_zoo", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"socket zoo exited with status {proc.wait()}")
        report = json.loads(line)
        yield Zoo(report["pid"], report["worker"], report["sockets"])
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def run_sockfleet(*args: str, check: bool = True, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``sockfleet`` command, optionally as another user (root only)."""
    command = [sys.executable, "-m", "sockfleet", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    if check and result.returncode != 0:
        pytest.fail(f"sockfleet {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def snapshot_json(*args: str, user: int | None = None) -> list[dict[str, Any]]:
    result = run_sockfleet("agent", "snapshot", "--format", "json", *args, user=user)
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows
