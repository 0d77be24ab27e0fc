"""CPU used by the processes around a benchmark: a local PostgreSQL server's, and the benchmark's own."""

from __future__ import annotations

import contextlib
import os
import resource

from sqlalchemy import Engine, text

TICKS = os.sysconf("SC_CLK_TCK")


class Postgres:
    """A local PostgreSQL server's CPU, WAL and counters (None where the server is not on this machine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        self.postmaster: int | None = None
        # A backend's title is "postgres: user database ..."; a server on another machine has none here.
        with contextlib.suppress(OSError), open(f"/proc/{backend}/cmdline", "rb") as cmdline:
            if cmdline.read().startswith(b"postgres"):
                self.postmaster = _parent(backend)

    def cpu(self) -> float | None:
        """The postmaster's CPU seconds, its ended children's (which it reaped), and each live child's."""
        if self.postmaster is None:
            return None
        fields = _stat(self.postmaster)
        total = sum(int(value) for value in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):  # a process that just ended
                    child = _stat(int(entry.name))
                    if int(child[1]) == self.postmaster:
                        total += (int(child[11]) + int(child[12])) / TICKS
        return total

    def counters(self) -> tuple[int, int, int]:
        """WAL position (bytes), transactions committed, and rows inserted, updated or deleted so far."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'), xact_commit, "
                    "tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()"
                )
            ).one()
        return int(row[0]), int(row[1]), int(row[2])


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, ppid, ... (see proc(5))."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rpartition(")")[2].split()


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def own_cpu() -> float:
    """This process's CPU seconds (the generator: every agent, gRPC's threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
