"""The harness of the collector's end-to-end tests: the ``sockfleet`` command as a process, a real
collector on a free loopback port, a real agent, and the questions asked of the database they fill."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # for the tests' own helper processes (python -m tests....)


def sockfleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "sockfleet", *args]


class Collector:
    """``sockfleet collector serve`` on a free loopback port (plain text, anonymous agents, unless ``secured``).

    What it says on standard error is read as it comes (``said``), so that its log never fills the pipe.
    """

    def __init__(self, db_url: str, port: int = 0, *extra: str, secured: bool = False) -> None:
        self.db_url = db_url
        plain = () if secured else ("--insecure", "--allow-anonymous")
        self.proc = subprocess.Popen(
            sockfleet("collector", "serve", *plain, "--listen", f"127.0.0.1:{port}", "--db", db_url, *extra),
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"collector did not start: {line}{self.proc.stderr.read()}"
        self.port = int(match.group(1))
        self.lines = [line]
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def said(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


class Web:
    """``sockfleet web`` on a free loopback port (``user``: run as that uid, root only); what it says on standard
    error is read as it comes; ``get`` asks it.  A context manager: stopped on leaving."""

    def __init__(self, *args: str, user: int | None = None) -> None:
        command = sockfleet("web", "--listen", "127.0.0.1:0", *args)
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"serving (https?)://127\.0\.0\.1:(\d+)/", line)
        assert match, f"sockfleet web did not start: {line}{self.proc.stderr.read()}"
        self.base = f"{match.group(1)}://127.0.0.1:{match.group(2)}"
        self.context = ssl._create_unverified_context() if match.group(1) == "https" else None
        self.lines = [line]
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        """(status, headers with lower-case names, body) of a GET."""
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=600, context=self.context) as reply:
                return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        self.reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def __enter__(self) -> Web:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Agent:
    """``sockfleet agent run`` for one host of the test, to a collector on this machine's loopback (a port), or
    to the ``--collector`` list given; with ``log``, what it says goes to that file."""

    def __init__(
        self, port: int | str, host: str, *extra: str, interval: str = "0.5s", log: Path | None = None
    ) -> None:
        self.log = log
        self.file = log.open("a") if log is not None else None
        self.proc = subprocess.Popen(
            sockfleet(
                "agent",
                "run",
                "--collector",
                f"127.0.0.1:{port}" if isinstance(port, int) else port,
                "--insecure",
                "--interval",
                interval,
                "--namespaces",
                "current",
                "--host",
                host,
                *extra,
            ),
            stdout=subprocess.DEVNULL,
            stderr=self.file or subprocess.DEVNULL,
            env=ENV,
            cwd=ROOT,
        )

    def said(self) -> str:
        return self.log.read_text() if self.log is not None else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        if self.file is not None:
            self.file.close()
        return code


def ask(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        sockfleet(*args, "--db", db_url), capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def ports(db_url: str, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ask(db_url, "ports", "--format", "json", *args).stdout)
    return rows


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
