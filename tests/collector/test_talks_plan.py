"""How PostgreSQL runs ``talks --at``: every join hashed, whatever it guesses of the rows open at the moment.

PostgreSQL cannot estimate how many rows are open at a moment (it guessed 41 listeners of the 10,000 a
1,000-host fleet keeps open).  With that guess it once sorted the 16,000 open flows by protocol and merged
each listener join on the protocol alone, testing every listener against every flow: 35 s instead of a
fraction of one.  The answer was right, only its plan was wrong, so this test reads the plan.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event

from sockfleet.collector import convert, db
from sockfleet.collector.store import Store
from sockfleet.collector.talks import Window, edges
from tests import postgres
from tests.collector import fleet
from tests.collector.fleet import at, inet

WEB, APP = "10.0.0.1", "10.0.0.2"


@pytest.fixture
def postgres_engine(pg_cluster: postgres.Cluster) -> Iterator[Engine]:
    """A migrated database of its own on the test cluster (a PostgreSQL plan: SQLite has no such choice)."""
    engine = db.engine(pg_cluster.database())
    try:
        db.migrate(engine)
        yield engine
    finally:
        engine.dispose()


def _calls(store: Store) -> None:
    """app-1 calls web-1 on a port held on 0.0.0.0, one held on ::, and one held on its own address."""
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=(WEB,))))
    app = store.hello(convert.greeting(fleet.hello("app-1", addresses=(APP,))))
    served = [
        inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"),
        inet("tcp", "::", 443, None, 0, 2, "envoy"),
        inet("tcp", WEB, 5432, None, 0, 3, "postgres"),
        inet("tcp", WEB, 80, APP, 40001, 4, "nginx"),
        inet("tcp", WEB, 443, APP, 40002, 5, "envoy"),
        inet("tcp", WEB, 5432, APP, 40003, 6, "postgres"),
    ]
    calling = [
        inet("tcp", APP, 40001, WEB, 80, 21, "curl"),
        inet("tcp", APP, 40002, WEB, 443, 22, "curl"),
        inet("tcp", APP, 40003, WEB, 5432, 23, "psql"),
    ]
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), served)))
    store.apply(app, convert.scan(fleet.snapshot(1, at(0), calling)))


def _statements(engine: Engine) -> Iterator[tuple[str, Any]]:
    """The statements ``talks --at`` sends, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        with engine.connect() as conn:
            found = edges(conn, Window(at(1)))
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    assert {(e.server_port, e.server_process, e.direction) for e in found} == {
        (80, "nginx", "listener"),
        (443, "envoy", "listener"),
        (5432, "postgres", "listener"),
    }
    yield from sent


def _joins(plan: dict[str, Any]) -> Iterator[str]:
    if "Join" in plan["Node Type"] or plan["Node Type"] == "Nested Loop":
        yield plan["Node Type"]
    for child in plan.get("Plans", []):
        yield from _joins(child)


def test_talks_at_a_moment_hashes_every_join(postgres_engine: Engine) -> None:
    _calls(Store(postgres_engine))
    statement, parameters = next(s for s in _statements(postgres_engine) if "flow_ends" in s[0])
    with postgres_engine.connect() as conn, db.large_joins(conn):
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar_one()
    joins = list(_joins(plan["Plan"]))
    assert joins
    assert set(joins) <= {"Hash Join"}, joins
