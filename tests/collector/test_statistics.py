"""A serving collector analyzes the open partitions when they have outgrown their statistics (PostgreSQL), so
that a group's close looks its keys up in the unique index instead of hashing every open row."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from sockfleet.collector import convert, db, statistics
from sockfleet.collector.store import Store
from sockfleet.collector.store.statements import CLOSE_KEYS_MANY
from sockfleet.v1 import fleet_pb2 as pb
from tests import postgres
from tests.benchmarks.bench_collector import make_socket
from tests.collector.harness import wait_for

HOSTS, SOCKETS = 15, 1_000


@pytest.fixture
def filled(pg_cluster: postgres.Cluster) -> Iterator[tuple[Engine, list[tuple[int, list[pb.Socket]]]]]:
    """A database whose open partition has 15,000 rows and was never analyzed (autovacuum kept off it)."""
    engine = db.engine(pg_cluster.database(), ping=False)
    try:
        db.migrate(engine)
        with engine.begin() as conn:
            for table in statistics.OPEN_PARTITIONS:
                conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        store, hosts = Store(engine), []
        for n in range(HOSTS):
            hello = pb.Hello(host_id=f"h{n}", host_name=f"h{n}", agent_version="test", interval_seconds=30)
            ref = store.hello(convert.greeting(hello))
            live = [make_socket(n, i) for i in range(SOCKETS)]
            taken = time.time_ns() // 1000
            store.apply(ref, convert.snapshot(pb.Snapshot(epoch=1, seq=1, taken_at_us=taken, sockets=live)))
            hosts.append((ref, live))
        # A backend reports what it changed to the statistics views at most once a second, and when it ends:
        # ending the connections that wrote makes every change visible to the keeper.
        engine.dispose()
        yield engine, hosts
    finally:
        engine.dispose()


def close_plan(engine: Engine, hosts: list[tuple[int, list[pb.Socket]]]) -> str:
    """PostgreSQL's plan for closing five sockets of each host in one statement, as a group does."""
    keys = [(ref, convert.key_digest(sock.key)) for ref, live in hosts for sock in live[10:15]]
    with engine.connect() as conn:
        sql = str(CLOSE_KEYS_MANY.compile(dialect=engine.dialect))
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor:
            params = {
                "refs": [ref for ref, _ in keys],
                "keys": [key for _, key in keys],
                "moments": [datetime(2026, 1, 1)] * len(keys),
            }
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        raw.rollback()
    return plan


def test_open_partitions_outgrown_are_analyzed_once(filled: tuple[Engine, list[tuple[int, list[pb.Socket]]]]) -> None:
    engine, hosts = filled
    keeper = statistics.Keeper(engine)
    before = close_plan(engine, hosts)
    assert "Hash Join" in before, before  # what a never analyzed partition makes PostgreSQL do
    wait_for(lambda: "sockets_open" in keeper.stale(), "the rows written to reach the statistics views")
    analyzed = keeper.refresh()
    assert "sockets_open" in analyzed
    after = close_plan(engine, hosts)
    assert "Hash Join" not in after and "Index Scan using uq_sockets_open_key" in after, after
    assert keeper.stale() == [] and keeper.refresh() == []  # fresh until it changes by as many rows again


def test_a_role_that_does_not_own_the_partitions_leaves_them_to_autovacuum(
    filled: tuple[Engine, list[tuple[int, list[pb.Socket]]]], caplog: pytest.LogCaptureFixture
) -> None:
    engine, _ = filled
    with engine.begin() as conn:
        conn.execute(text("DROP ROLE IF EXISTS sockfleet_reader"))
        conn.execute(text("CREATE ROLE sockfleet_reader LOGIN"))
    reader = create_engine(
        make_url(str(engine.url.render_as_string(hide_password=False))).set(username="sockfleet_reader")
    )
    try:
        keeper = statistics.Keeper(reader)
        with caplog.at_level(logging.INFO, "sockfleet.collector"):
            assert keeper.refresh() == [] and keeper.refresh() == []
        said = [record.getMessage() for record in caplog.records]
        assert said.count("cannot analyze sockets_open (not its owner): its statistics are left to autovacuum") == 1
    finally:
        reader.dispose()
        with engine.begin() as conn:
            conn.execute(text("DROP ROLE sockfleet_reader"))


def test_an_analysis_waits_for_a_lock_at_most_a_second(
    filled: tuple[Engine, list[tuple[int, list[pb.Socket]]]],
) -> None:
    """Another session's VACUUM or index build holds the partition: the analysis gives up after a second and is
    tried at the next look (a stopping collector waited for it before), then runs once the lock is gone."""
    engine, _ = filled
    keeper = statistics.Keeper(engine)
    wait_for(lambda: "sockets_open" in keeper.stale(), "the rows written to reach the statistics views")
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE sockets_open IN SHARE UPDATE EXCLUSIVE MODE"))
        with pytest.raises(OperationalError, match="lock timeout"):
            keeper.refresh()
        holder.rollback()
    assert "sockets_open" in keeper.refresh()


def test_a_missing_open_partition_is_said_once(pg_cluster: postgres.Cluster, caplog: pytest.LogCaptureFixture) -> None:
    engine = db.engine(pg_cluster.database(), ping=False)
    try:
        db.migrate(engine)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE flows_open RENAME TO flows_open_elsewhere"))
        keeper = statistics.Keeper(engine)
        with caplog.at_level(logging.INFO, "sockfleet.collector"):
            assert keeper.refresh() == [] and keeper.refresh() == []
        said = [record.getMessage() for record in caplog.records]
        assert said == ["cannot analyze flows_open (no such table): its statistics are left to autovacuum"]
    finally:
        engine.dispose()
