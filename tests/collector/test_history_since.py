"""`history --host H --since S` reads the rows open at S and those begun after it: the same rows, in the
same order, as every row of the host that ended after S (or never), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, or_, select

from sockfleet.collector import convert
from sockfleet.collector.changes import HISTORY_FIELDS, history
from sockfleet.collector.schema import hosts, sockets
from sockfleet.collector.store import Store
from tests.collector import fleet
from tests.collector.fleet import at, inet

SINCE = 100  # minutes after T0
# Connections of web-1 on port 80 (opened, closed; None: still open), in minutes: before SINCE and still
# open, closed before it, closed at it, closed after it (lives of every lifetime class, minutes to days), and
# begun at or after it.
LIVES = (
    (0, None),
    (5, None),
    (0, 10),
    (60, 99),
    (0, SINCE),
    (99, 101),
    (90, 120),
    (0, 200),
    (3, 3000),
    (50, 9000),
    (SINCE, None),
    (SINCE, 130),
    (150, 160),
    (8000, None),
)


def _connection(number: int, process: str = "nginx") -> Any:
    return inet("tcp", "10.0.0.1", 80, "10.0.0.2", 40000 + number, 100 + number, process)


def _load(engine: Engine) -> None:
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    app = store.hello(convert.greeting(fleet.hello("app-1", addresses=("10.0.0.2",))))
    listener = inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")
    changes: dict[int, tuple[list[Any], list[Any]]] = defaultdict(lambda: ([], []))
    for number, (opened, closed) in enumerate(LIVES):
        changes[opened][0].append(_connection(number))
        if closed is not None:
            changes[closed][1].append(_connection(number))
    changes[SINCE - 30][0].append(inet("tcp", "0.0.0.0", 8080, None, 0, 2, "java"))
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [listener, *changes.pop(0)[0]])))
    store.apply(app, convert.scan(fleet.snapshot(1, at(0), [_connection(99, "curl")])))
    for seq, minute in enumerate(sorted(changes), start=2):
        added, removed = changes[minute]
        store.apply(web, convert.scan(fleet.delta(seq, at(minute), added=added, removed=removed)))


def _every_row_ended_after(conn: Connection, host: str, since: datetime, port: int | None) -> list[dict[str, Any]]:
    """The host's rows that ended after ``since`` or are open, read in one pass over all of them."""
    ref = conn.execute(select(hosts.c.id).where(hosts.c.name == host)).scalar()
    conditions = [sockets.c.host_ref == ref, or_(sockets.c.valid_to.is_(None), sockets.c.valid_to > since)]
    if port is not None:
        conditions.append(sockets.c.local_port == port)
    columns = [hosts.c.name.label("host"), *(sockets.c[name] for name in HISTORY_FIELDS[1:])]
    query = (
        select(*columns)
        .select_from(sockets.join(hosts, hosts.c.id == sockets.c.host_ref))
        .where(*conditions)
        .order_by(sockets.c.valid_from, sockets.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def test_history_since_is_every_row_ended_after_it(engine: Engine) -> None:
    _load(engine)
    with engine.connect() as conn:
        for port in (None, 80, 8080):
            for minute in (SINCE, 0, 1, 100.5, 3000, 20000):
                expected = _every_row_ended_after(conn, "web-1", at(minute), port)
                assert history(conn, "web-1", port=port, since=at(minute)) == expected, (port, minute)
        answer = history(conn, "web-1", since=at(SINCE))
        assert history(conn, "app-1", since=at(SINCE)) == _every_row_ended_after(conn, "app-1", at(SINCE), None)
    got = {(row["local_port"], row["remote_port"], row["valid_from"], row["valid_to"]) for row in answer}
    # Open at SINCE from before it: still open, closed after it; begun at it or later.
    for number, (opened, closed) in enumerate(LIVES):
        kept = closed is None or closed > SINCE
        row = (80, 40000 + number, at(opened), None if closed is None else at(closed))
        assert (row in got) == kept, (opened, closed)
    assert (8080, None, at(SINCE - 30), None) in got
