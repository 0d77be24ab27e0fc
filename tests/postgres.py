"""A throwaway PostgreSQL server for the tests: initdb in a temporary folder, Unix socket only.

``SOCKFLEET_TEST_PG_URL`` names an existing server instead (a SQLAlchemy URL whose
user may create databases).  Otherwise the binaries are looked for under
``/usr/lib/postgresql/*/bin`` and on PATH.  As root, the server runs as the
``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def binaries() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A running server; ``database()`` makes a fresh empty database and returns its URL."""

    def __init__(
        self, admin_url: str, stop: list[str] | None = None, user: str | None = None, start: list[str] | None = None
    ) -> None:
        self.admin_url = admin_url
        self._stop = stop
        self._start = start
        self._user = user

    def database(self) -> str:
        name = f"sockfleet_test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def run_as_owner(self, command: list[str]) -> None:
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        if self._stop:
            self.run_as_owner(self._stop)

    def start(self) -> None:
        """Start the server again after ``stop`` (only for a server this module started)."""
        if self._start:
            self.run_as_owner(self._start)


@contextmanager
def cluster(settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A throwaway server (or the one SOCKFLEET_TEST_PG_URL names); ``settings`` are extra server settings."""
    external = os.environ.get("SOCKFLEET_TEST_PG_URL")
    if external:
        yield Cluster(external)
        return
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run `bash .ci/setup`, or set SOCKFLEET_TEST_PG_URL")
    user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="sockfleet-pg-"))
    data, sockets_dir = base / "data", base / "run"
    sockets_dir.mkdir()
    if user:
        entry = pwd.getpwnam(user)
        for path in (base, sockets_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    owner = Cluster("", user=user)
    try:
        owner.run_as_owner(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]
        )
        options = f"-k {sockets_dir} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=200"
        options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"]
        owner.run_as_owner(start)
        url = f"postgresql+psycopg://postgres@/postgres?host={sockets_dir}&port={port}"
        running = Cluster(url, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user, start)
        yield running
        running.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def database(backend: str, settings: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh empty database URL: ``sqlite`` in a temporary folder, or ``postgresql`` on a throwaway server."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/sockfleet.db"
    elif backend == "postgresql":
        with cluster(settings) as running:
            yield running.database()
    else:
        raise ValueError(f"unknown backend {backend!r} (sqlite, postgresql)")
