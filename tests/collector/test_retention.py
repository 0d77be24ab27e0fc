"""Retention on SQLite and PostgreSQL: a prune removes history that ended before the horizon, every question about
a later moment answers as before, an earlier moment is refused, ingest goes on while a prune runs, and (on
PostgreSQL) days are partitions made ahead and dropped whole."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import grpc
from sqlalchemy import Engine, func, select, text

from sockfleet.collector import convert, db, partitions, retention
from sockfleet.collector.schema import closed_flows, flows, host_addresses, observations, sockets
from sockfleet.collector.store import Store
from sockfleet.collector.store.statements import OPEN_ROWS
from sockfleet.collector.times import now, rfc3339
from sockfleet.v1 import fleet_pb2 as pb
from tests import postgres
from tests.collector import fleet
from tests.collector.aged import HOUR, AgedFleet, answers, questions, substantial
from tests.collector.harness import Collector, ask, wait_for
from tests.collector.raw import STREAM


def aged(engine: Engine) -> AgedFleet:
    """80 hours of history: the first 40 written at the previous release's schema, the rest after the upgrade."""
    db.migrate(engine, "0013")
    fleet_ = AgedFleet(now().replace(microsecond=0) - 79.5 * HOUR)
    fleet_.advance_at_release_schema(engine, 40)
    db.migrate(engine)
    fleet_.advance(engine, 38)
    return fleet_


def older(engine: Engine, horizon: datetime) -> dict[str, int]:
    """Rows of each history table dated before ``horizon``."""
    found = {}
    with engine.connect() as conn:
        for table, column in (
            (sockets, sockets.c.valid_to),
            (flows, flows.c.valid_to),
            (closed_flows, closed_flows.c.last_at),
            (observations, observations.c.taken_at),
            (host_addresses, host_addresses.c.valid_to),
        ):
            found[table.name] = conn.execute(select(func.count()).where(column < horizon)).scalar_one()
    return found


def test_after_a_prune_every_question_after_the_horizon_answers_as_before(empty_engine: Engine, db_url: str) -> None:
    history = aged(empty_engine)
    horizon = history.moment(36.5)  # between two scans: the hosts' last observation before it goes
    moments = [horizon, horizon + timedelta(seconds=1), history.moment(50.25), history.moment(77.5)]
    asked = questions(moments, history.moment(40), history.moment(70))
    before = answers(db_url, asked)
    substantial(before)
    assert any(count for count in older(empty_engine, horizon).values())
    pruned = retention.prune(empty_engine, horizon, batch=100)
    assert pruned.rows > 0 and pruned.horizon == horizon
    assert (pruned.partitions > 0) == (empty_engine.dialect.name == "postgresql")
    assert not any(older(empty_engine, horizon).values())
    after = answers(db_url, asked)
    for question in asked:
        assert after[question] == before[question], question
    history.advance(empty_engine, 1)  # the agents' next messages are taken as before


def test_a_moment_before_the_horizon_is_refused_in_one_line(engine: Engine, db_url: str) -> None:
    horizon = now().replace(microsecond=0) - timedelta(days=2)
    retention.prune(engine, horizon)
    earlier, later = rfc3339(horizon - timedelta(minutes=1)) or "", rfc3339(horizon + timedelta(minutes=1)) or ""
    for question in (
        ("hosts", "--at", earlier),
        ("sockets", "--at", earlier),
        ("ports", "--at", earlier),
        ("talks", "--at", earlier),
        ("talks", "--since", earlier),
        ("audit", "--at", earlier),
        ("diff", "--from", earlier),
        ("history", "--host", "web-1", "--since", earlier),
    ):
        refused = ask(db_url, *question, check=False)
        assert refused.returncode == 2, question
        assert refused.stdout == ""
        option = question[-2]
        assert refused.stderr.splitlines() == [
            f"sockfleet: error: {option} {earlier}: history before {rfc3339(horizon)} was removed (retention); "
            "ask about a later moment"
        ]
    assert ask(db_url, "talks", "--since", later, "--format", "json").stdout.strip() == "[]"
    assert ask(db_url, "ports", "--at", rfc3339(horizon) or "", "--format", "json").stdout.strip() == "[]"


def _late_host(port: int) -> list[int]:
    """A host's hello, snapshot and delta on a collector's stream; the sequence numbers acknowledged."""
    moment = now()
    listener = fleet.tcp_listener(8443)
    messages = [
        pb.AgentMessage(hello=fleet.hello("late-1", addresses=("10.0.0.9",))),
        pb.AgentMessage(snapshot=fleet.snapshot(1, moment, [fleet.tcp_listener(80)])),
        pb.AgentMessage(delta=fleet.delta(2, moment + timedelta(milliseconds=1), added=[listener])),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        return [reply.ack.seq for reply in call(iter(messages)) if reply.HasField("ack")]


def test_ingest_goes_on_while_a_prune_runs(collector: Collector, db_url: str) -> None:
    engine = db.engine(db_url)
    try:
        history = AgedFleet(now().replace(microsecond=0) - 49.5 * HOUR)
        history.advance(engine, 48)
        pauses: list[list[int]] = []

        def between() -> None:  # the prune is half-way: a real collector takes and acknowledges a delta
            if not pauses:
                pauses.append(_late_host(collector.port))
            else:
                pauses.append([])

        pruned = retention.prune(engine, history.moment(30), batch=20, between=between)
    finally:
        engine.dispose()
    assert pauses[0] == [1, 2] and len(pauses) > 1  # acknowledged with batches still to do
    assert pruned.rows > 40
    late = json.loads(ask(db_url, "ports", "--host", "late-1", "--format", "json").stdout)
    assert {row["local_port"] for row in late} == {80, 8443}


def test_a_prune_of_nothing_and_the_status(engine: Engine, db_url: str) -> None:
    shown = ask(db_url, "collector", "status").stdout
    assert "keep everything" in shown and "none yet" in shown and "newest" in shown
    result = ask(db_url, "collector", "prune", "--older-than", "30d")
    assert "removed: 0 rows, 0 partitions" in result.stderr
    status = json.loads(ask(db_url, "collector", "status", "--format", "json").stdout)
    assert status["revision"] == status["head"] == db.head()
    assert status["database"] == db.shown(engine.url) and "password" not in status["database"]
    assert status["rows_removed"] == status["partitions_removed"] == 0
    horizon = datetime.fromisoformat(status["horizon"].replace("Z", "+00:00")).replace(tzinfo=None)
    assert abs(horizon - (now() - timedelta(days=30))) < timedelta(minutes=5)
    assert status["hosts"] == {}
    if engine.dialect.name == "postgresql":
        assert {layout["table"] for layout in status["partitions"]} == set(partitions.TABLES)
        assert all(layout["days"] == partitions.DAYS_AHEAD + 1 for layout in status["partitions"])
    else:
        assert status["partitions"] is None


def test_the_status_of_a_pruned_fleet(empty_engine: Engine, db_url: str) -> None:
    aged(empty_engine)
    ask(db_url, "collector", "prune", "--older-than", "2d")
    status = json.loads(ask(db_url, "collector", "status", "--format", "json").stdout)
    assert status["hosts"] == {"live": 3}  # as `sockfleet hosts` says
    assert status["rows_removed"] > 0 and status["last_pruned_at"] is not None
    lines = ask(db_url, "collector", "status").stdout.splitlines()
    assert lines[0].split() == ["database", db.shown(empty_engine.url)]
    assert any(line.startswith("retention") and status["horizon"] in line for line in lines)
    assert any(line.startswith("last prune") and f"{status['rows_removed']} rows" in line for line in lines)
    assert lines[-1].split() == ["hosts", "3", "live"]
    assert sum(line.startswith("partitions") for line in lines) == (
        4 if empty_engine.dialect.name == "postgresql" else 0
    )


def test_a_collector_serving_with_retain_prunes(empty_engine: Engine, db_url: str) -> None:
    aged(empty_engine)
    running = Collector(db_url, 0, "--retain", "2d")
    try:

        def pruned() -> bool:
            status = json.loads(ask(db_url, "collector", "status", "--format", "json").stdout)
            return status["last_pruned_at"] is not None

        wait_for(pruned, "the collector's first prune")
    finally:
        running.stop()
    assert not any(older(empty_engine, now() - timedelta(days=2, minutes=5)).values())


def test_day_partitions_are_made_ahead_and_old_days_dropped_whole(pg_cluster: postgres.Cluster) -> None:
    engine = db.engine(pg_cluster.database())
    try:
        history = aged(engine)
        today = now().date()
        with engine.connect() as conn:
            held = partitions.days(conn, "sockets")
            # The store's reads and updates of open rows read the open partition alone.
            statement = OPEN_ROWS.params(ref=1).compile(engine, compile_kwargs={"literal_binds": True})
            plan = conn.execute(text(f"EXPLAIN {statement}")).scalars().all()
        assert held[0] == history.moment(0).date() and held[-1] == today + timedelta(days=partitions.DAYS_AHEAD)
        assert "sockets_open" in " ".join(plan) and "sockets_p" not in " ".join(plan), plan
        assert partitions.make_ahead(engine) == 0
        assert partitions.make_ahead(engine, today + timedelta(days=2)) == 2 * len(partitions.TABLES)
        horizon = history.moment(50)
        whole = [day for day in held if datetime.combine(day + timedelta(days=1), datetime.min.time()) <= horizon]
        pruned = retention.prune(engine, horizon)
        assert whole and pruned.partitions == len(whole) * len(partitions.TABLES)
        with engine.connect() as conn:
            assert partitions.days(conn, "sockets")[0] == whole[-1] + timedelta(days=1)
        store = Store(engine)  # an agent replaying its spool: rows older than any day partition still go in
        ref = store.hello(convert.greeting(fleet.hello("late-1", addresses=("10.0.0.9",))))
        late = now() - timedelta(days=10)
        assert store.apply(ref, convert.scan(fleet.snapshot(1, late, [fleet.tcp_listener(80)]))).acked
        closing = fleet.delta(2, late + timedelta(minutes=1), removed=[fleet.tcp_listener(80)])
        assert store.apply(ref, convert.scan(closing)).acked
        assert older(engine, late + timedelta(minutes=2))["sockets"] == 1
    finally:
        engine.dispose()
