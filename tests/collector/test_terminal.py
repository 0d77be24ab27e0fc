"""Output safe for terminals: a process named with escape sequences (through prctl) cannot act on the terminal
of whoever lists it; tables and CSV show the characters written out, JSON keeps them exact."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import Agent, Collector, ask, wait_for
from tests.conftest import run_sockfleet

NAME = "\x1b[2J\x1b]0;pwn\x07"  # clear the screen, set the window title, ring the bell
SHOWN = "\\x1b[2J\\x1b]0;pwn\\x07"
HOLDER = """
import ctypes, socket, sys
libc = ctypes.CDLL(None)
libc.prctl(15, ctypes.c_char_p(sys.argv[1].encode()), 0, 0, 0)  # PR_SET_NAME
server = socket.create_server(("127.0.0.1", 0))
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(sys.argv[2])
unix.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A process named with escape sequences, holding a TCP listener and a Unix socket whose path has them."""
    path = str(tmp_path / "\x1b[31mred.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, NAME, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield int(proc.stdout.readline()), path
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_agent_snapshot_output(holder: tuple[int, str]) -> None:
    port, path = holder
    table = run_sockfleet("agent", "snapshot", "--namespaces", "current").stdout
    assert "\x1b" not in table and "\x07" not in table
    assert SHOWN in table and "\\x1b[31mred.sock" in table
    csv = run_sockfleet("agent", "snapshot", "--namespaces", "current", "--format", "csv").stdout
    assert "\x1b" not in csv and SHOWN in csv
    rows = json.loads(run_sockfleet("agent", "snapshot", "--namespaces", "current", "--format", "json").stdout)
    assert any(r["local_port"] == port and r["process"] == NAME for r in rows)  # JSON stays exact
    assert any(r["path"] == path for r in rows)


def test_collector_output(holder: tuple[int, str], tmp_path: Path) -> None:
    port, _ = holder
    collector = Collector(f"sqlite:///{tmp_path / 'terminal.db'}")
    agent = Agent(collector.port, "escapes")
    try:

        def stored() -> bool:
            return bool(json.loads(ask(collector.db_url, "ports", "--port", str(port), "--format", "json").stdout))

        wait_for(stored, "the listener")
    finally:
        agent.stop()
        collector.stop()
    for fmt in ("table", "csv"):
        shown = ask(collector.db_url, "ports", "--format", fmt).stdout
        assert "\x1b" not in shown and "\x07" not in shown
        assert SHOWN in shown
    [row] = json.loads(ask(collector.db_url, "ports", "--port", str(port), "--format", "json").stdout)
    assert row["process"] == NAME
    dot = ask(collector.db_url, "talks", "--format", "dot").stdout
    assert "\x1b" not in dot


def test_notes_on_standard_error_show_a_host_name_written_out(tmp_path: Path) -> None:
    """A host named with escape sequences that stops reporting: the notes naming it (stale, not audited)
    write the characters out, as the tables do."""
    host = "evil\x1b[31m\nhost"
    collector = Collector(f"sqlite:///{tmp_path / 'notes.db'}")
    agent = Agent(collector.port, host)
    try:
        wait_for(lambda: bool(json.loads(ask(collector.db_url, "hosts", "--format", "json").stdout)), "the host")
    finally:
        agent.stop()
        collector.stop()

    def stale() -> bool:
        return "stale" in ask(collector.db_url, "ports").stderr

    wait_for(stale, "the host to be stale")
    for question in (["ports"], ["audit"]):
        said = ask(collector.db_url, *question, check=False).stderr
        assert "\x1b" not in said and "evil\\x1b[31m\\x0ahost" in said, said
