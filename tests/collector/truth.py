"""Ground truth for fault tests: listeners the test opens and closes, with the times it did so,
compared with the history the collector stored."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from sockfleet.agent.netns import entered
from sockfleet.agent.records import Namespace
from tests.collector.harness import ask

SCAN_LENGTH = 0.5  # seconds a scan may take on a loaded test machine


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Life:
    port: int
    opened: datetime
    closed: datetime | None = None


class Truth:
    """Listeners on ``address`` (in the test's own network namespace unless a factory is given)."""

    def __init__(self, address: str = "127.0.0.1", namespace: str | None = None) -> None:
        self.address = address
        self.namespace = namespace  # a file naming a network namespace, like /run/netns/NAME
        self.lives: list[Life] = []
        self.sockets: dict[int, socket.socket] = {}

    def open(self) -> int:
        """A new listener; in ``namespace`` when given (the socket stays there, held by this process)."""
        if self.namespace is None:
            sock = socket.create_server((self.address, 0))
        else:
            with entered(Namespace(inode=0, path=self.namespace, pid=None, current=False)):
                sock = socket.create_server((self.address, 0))
        port: int = sock.getsockname()[1]
        self.sockets[port] = sock
        self.lives.append(Life(port, now()))
        return port

    def close(self, port: int) -> None:
        self.sockets.pop(port).close()
        next(life for life in self.lives if life.port == port).closed = now()

    def close_all(self) -> None:
        for port in list(self.sockets):
            self.close(port)

    def check(
        self,
        db_url: str,
        host: str,
        interval: float,
        slack: float = 1.5,
        gaps: tuple[tuple[datetime, datetime], ...] | list[tuple[datetime, datetime]] = (),
    ) -> None:
        """Each listener has exactly one stored life, opened and closed within one scan of the truth.

        An edge inside a recorded gap (scans the agent dropped, up to the first scan it kept) may be
        stored anywhere up to the end of that gap.
        """
        history = json.loads(ask(db_url, "history", "--host", host, "--format", "json").stdout)

        def near(stored: datetime, actual: datetime) -> bool:
            late = (stored - actual).total_seconds()
            # A scan is dated when it starts: a socket that opened or closed while it ran is stored at that date,
            # a little before it happened.
            if -SCAN_LENGTH <= late <= interval + slack:
                return True
            return any(
                start - timedelta(seconds=interval) <= actual <= end and stored <= end + timedelta(seconds=slack)
                for start, end in gaps
            )

        for life in self.lives:
            # This process's listeners only: another test may bind the same port once this one let it go.
            mine = (life.port, "LISTEN", os.getpid())
            rows = [r for r in history if (r["local_port"], r["state"], r["pid"]) == mine]
            assert len(rows) == 1, f"port {life.port}: {len(rows)} stored lives, expected one"
            row = rows[0]
            assert near(datetime.fromisoformat(row["valid_from"].rstrip("Z")), life.opened), (life, row)
            if life.closed is None:
                assert row["valid_to"] is None, (life, row)
            else:
                assert near(datetime.fromisoformat(row["valid_to"].rstrip("Z")), life.closed), (life, row)


def recorded_gaps(db_url: str, host: str) -> list[tuple[datetime, datetime]]:
    """(first dropped scan, first kept scan) of each gap the host's observations record."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT o.taken_at, o.coverage FROM observations o JOIN hosts h ON h.id = o.host_ref "
                "WHERE h.name = :h AND o.gaps > 0"
            ),
            {"h": host},
        ).all()
    engine.dispose()
    return [
        (datetime.fromisoformat(gap["from"].rstrip("Z")), datetime.fromisoformat(str(taken)))
        for taken, coverage in rows
        for gap in json.loads(coverage)["gaps"]
    ]
