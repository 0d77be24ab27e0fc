"""Every operator mistake is one line on standard error and exit status 2, with no file made and nothing
half done; files sockfleet makes are private; a database on a read-only mount still answers."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import ENV, Collector, ask, sockfleet
from tests.conftest import ROOT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sockfleet(*args), capture_output=True, text=True, env=env or ENV, cwd=ROOT, timeout=60, check=False
    )


def one_line(result: subprocess.CompletedProcess[str], status: int = 2) -> str:
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


@pytest.fixture
def stored(tmp_path: Path) -> str:
    """A sockfleet database with a host in it."""
    url = f"sqlite:///{tmp_path / 'stored.db'}"
    collector = Collector(url)
    try:
        from tests.collector.raw import hello, snapshot, stream

        stream(collector.port, [hello("web-1"), snapshot()])
    finally:
        collector.stop()
    return url


@pytest.mark.parametrize("command", ["ports", "hosts", "sockets"])
def test_a_time_out_of_range(stored: str, command: str) -> None:
    line = one_line(run(command, "--at", "0001-01-01T00:00:00Z", "--db", stored))
    assert (
        line == "sockfleet: error: --at: '0001-01-01T00:00:00Z' is before 2000-01-01, where sockfleet's history begins"
    )


def test_times_out_of_range_in_windows(stored: str) -> None:
    assert "--since" in one_line(run("talks", "--since", "0001-01-01T00:00:00Z", "--db", stored))
    assert "--from" in one_line(run("diff", "--from", "1999-12-31T23:59:59Z", "--db", stored))
    assert "--at" in one_line(run("audit", "--at", "-300000w", "--db", stored))


def test_a_database_that_does_not_exist_is_not_made(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sockfleet.db"
    line = one_line(run("ports", "--db", f"sqlite:///{missing}"))
    assert "no such database" in line
    assert not (tmp_path / "nowhere").exists()
    line = one_line(run("collector", "serve", "--insecure", "--db", f"sqlite:///{missing}"))
    assert f"the folder {missing.parent} does not exist" in line
    assert not (tmp_path / "nowhere").exists()


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not the tables you are looking for\n" * 100)
    before = notes.read_bytes()
    for args in (
        ("collector", "serve", "--insecure", "--listen", "127.0.0.1:0"),
        ("collector", "enroll", "--host", "x"),
        ("collector", "migrate"),
        ("ports",),
    ):
        assert "not a SQLite database" in one_line(run(*args, "--db", f"sqlite:///{notes}"))
    assert notes.read_bytes() == before


def test_another_applications_database_is_left_alone_unless_told(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    url = f"sqlite:///{other}"
    line = one_line(run("collector", "migrate", "--db", url))
    assert "holds 1 tables of another application" in line and "--init" in line
    with sqlite3.connect(other) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["invoices"]
    assert run("collector", "migrate", "--init", "--db", url).returncode == 0
    with sqlite3.connect(other) as conn:
        assert {"invoices", "hosts", "sockets"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


def test_an_unreachable_postgresql(tmp_path: Path) -> None:
    for args in (("collector", "serve", "--insecure"), ("collector", "enroll", "--host", "x"), ("ports",)):
        line = one_line(run(*args, "--db", "postgresql://sockfleet@127.0.0.1:1/sockfleet"))
        assert line.startswith("sockfleet: error: --db postgresql+psycopg://sockfleet@127.0.0.1:1/sockfleet: ")
        assert "refused" in line.lower()


def test_postgres_urls_are_postgresql(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL URL")
    url = db_url.replace("postgresql+psycopg://", "postgres://", 1)
    assert run("collector", "migrate", "--db", url).returncode == 0
    assert run("hosts", "--db", url).returncode == 0


def test_typos_get_a_suggestion(stored: str) -> None:
    line = one_line(run("ports", "--prot", "tcp", "--db", stored))
    assert line == (
        "sockfleet ports: error: unrecognized arguments --prot tcp (did you mean --proto?); see sockfleet ports --help"
    )
    assert "did you mean 'ports'?" in one_line(run("prots", "--db", stored))
    assert "did you mean 'enroll'?" in one_line(run("collector", "enrol", "--host", "x", "--db", stored))
    assert "did you mean --proto" in one_line(run("agent", "snapshot", "--protocol", "tcp"))
    assert "unknown value for --proto" in one_line(run("ports", "--proto", "sctp", "--db", stored))


def test_a_port_in_use(tmp_path: Path) -> None:
    busy = Collector(f"sqlite:///{tmp_path / 'first.db'}")
    try:
        line = one_line(
            run(
                "collector",
                "serve",
                "--insecure",
                "--listen",
                f"127.0.0.1:{busy.port}",
                "--db",
                f"sqlite:///{tmp_path / 'second.db'}",
            )
        )
        assert line == f"sockfleet: error: cannot listen on 127.0.0.1:{busy.port}: Address already in use"
    finally:
        busy.stop()


def test_hosts_by_id_and_sockets_by_state(stored: str) -> None:
    assert ask(stored, "ports", "--host", "id-web-1").stdout == ask(stored, "ports", "--host", "web-1").stdout
    listening = ask(stored, "sockets", "--state", "listen", "--format", "csv").stdout.splitlines()
    assert len(listening) == 2 and ",LISTEN," in listening[1]
    assert ask(stored, "sockets", "--state", "ESTABLISHED,TIME_WAIT", "--format", "csv").stdout.count("\n") == 1
    assert "states are LISTEN" in one_line(run("sockets", "--state", "OPEN", "--db", stored))


def test_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**ENV, "XDG_DATA_HOME": str(home)}
    assert run("collector", "migrate", env=env).returncode == 0
    folder, database = home / "sockfleet", home / "sockfleet" / "sockfleet.db"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert run("demo", "--once", "--interval", "0.5s", env=env).returncode == 0
    assert stat.S_IMODE((folder / "demo.db").stat().st_mode) == 0o600


@pytest.fixture
def read_only(stored: str, tmp_path: Path) -> Iterator[str]:
    """The stored database seen through a read-only bind mount (mounting needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only mount needs root")
    source = Path(stored.removeprefix("sqlite:///"))
    view = tmp_path / "read-only"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(source.parent), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield f"sqlite:///{view / source.name}"
    finally:
        subprocess.run(["umount", str(view)], check=False)


@pytest.mark.root
def test_a_database_on_a_read_only_mount_answers(read_only: str) -> None:
    hosts = ask(read_only, "hosts").stdout
    assert "web-1" in hosts
    assert ask(read_only, "ports", "--host", "web-1", "--format", "json").stdout.startswith("[{")
    assert "read-only here" in one_line(run("collector", "migrate", "--db", read_only))
