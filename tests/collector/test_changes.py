"""A host's timeline and the diff between two moments, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import Engine

from sockfleet.collector import convert
from sockfleet.collector.changes import diff, history
from sockfleet.collector.store import Store
from sockfleet.collector.times import now, rfc3339
from tests.collector import fleet
from tests.collector.fleet import at, inet
from tests.collector.harness import ask


def test_history_and_diff(engine: Engine) -> None:
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    app = store.hello(convert.greeting(fleet.hello("app-1", addresses=("10.0.0.2",))))
    nginx = inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")
    java = inet("tcp", "0.0.0.0", 8080, None, 0, 2, "java")
    served = inet("tcp", "10.0.0.1", 80, "10.0.0.2", 40000, 3, "nginx")
    client = inet("tcp", "10.0.0.2", 40000, "10.0.0.1", 80, 4, "curl")
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [nginx, served])))
    store.apply(app, convert.scan(fleet.snapshot(1, at(0), [client])))
    store.apply(web, convert.scan(fleet.delta(2, at(2), added=[java], removed=[served])))
    store.apply(app, convert.scan(fleet.delta(2, at(2), removed=[client])))
    store.apply(web, convert.scan(fleet.delta(3, at(4), changed=[inet("tcp", "0.0.0.0", 8080, None, 0, 2, "jetty")])))
    store.apply(app, convert.scan(fleet.delta(3, at(4))))
    with engine.connect() as conn:
        timeline = history(conn, "web-1", port=8080)
        since = history(conn, "web-1", since=at(3))
        rows, left_out = diff(conn, at(1), at(3))
        owner_change, _ = diff(conn, at(3), at(5), host="web-1")
    assert [(t["process"], t["valid_from"], t["valid_to"]) for t in timeline] == [
        ("java", at(2), at(4)),
        ("jetty", at(4), None),
    ]
    assert {(t["local_port"], t["remote_port"]) for t in since} == {(80, None), (8080, None)}
    assert left_out == []
    assert {(r["change"], r["kind"], r.get("local_port") or r.get("server_port")) for r in rows} == {
        ("opened", "listener", 8080),
        ("closed", "edge", 80),
    }
    assert {(r["change"], r["process"]) for r in owner_change} == {("closed", "java"), ("opened", "jetty")}


def test_diff_runs_to_now_without_to(engine: Engine) -> None:
    """``sockfleet diff --from T`` compares T with now."""
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    start = now() - timedelta(minutes=2)
    store.apply(web, convert.scan(fleet.snapshot(1, start, [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")])))
    store.apply(
        web,
        convert.scan(
            fleet.delta(2, start + timedelta(minutes=1), added=[inet("tcp", "0.0.0.0", 8080, None, 0, 2, "java")])
        ),
    )
    since = str(rfc3339(start + timedelta(seconds=30)))
    result = ask(engine.url.render_as_string(hide_password=False), "diff", "--from", since, "--format", "json")
    assert [(r["change"], r["host"], r["local_port"], r["process"]) for r in json.loads(result.stdout)] == [
        ("opened", "web-1", 8080, "java")
    ]
    assert result.stderr == ""
