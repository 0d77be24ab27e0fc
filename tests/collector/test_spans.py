"""Lifetime classes: the store sets them as the rule says, and "alive at T" through them is the plain interval test."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, insert, or_, select

from sockfleet.collector import convert, partitions, spans
from sockfleet.collector.schema import host_state, hosts, sockets
from sockfleet.collector.store import Store
from tests.collector import fleet
from tests.collector.fleet import at, inet

T0 = datetime(2026, 11, 1)


def test_classes_follow_the_limits() -> None:
    assert spans.span_of(T0, None) is None
    assert spans.span_of(T0, T0) == 0
    assert spans.span_of(T0, T0 + timedelta(minutes=1)) == 0
    assert spans.span_of(T0, T0 + timedelta(minutes=1, microseconds=1)) == 1
    assert spans.span_of(T0, T0 + timedelta(minutes=16)) == 2
    assert spans.span_of(T0, T0 + timedelta(days=3)) == 7
    assert spans.span_of(T0, T0 + timedelta(days=800)) == spans.UNBOUNDED


def test_store_sets_the_class_when_a_row_closes(engine: Engine) -> None:
    store = Store(engine)
    ref = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    base = [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")]
    store.apply(
        ref, convert.scan(fleet.snapshot(1, at(0), [*base, inet("tcp", "10.0.0.1", 80, "10.0.0.2", 40001, 2, "nginx")]))
    )
    # A snapshot closes the connection after a few minutes, and a later one the listener after hours.
    store.apply(ref, convert.scan(fleet.snapshot(2, at(0) + timedelta(minutes=3), base)))
    store.apply(ref, convert.scan(fleet.snapshot(3, at(0) + timedelta(hours=5), [])))
    with engine.connect() as conn:
        rows = conn.execute(
            select(sockets.c.local_port, sockets.c.valid_from, sockets.c.valid_to, sockets.c.span)
        ).all()
    assert len(rows) == 2
    for row in rows:
        assert row.span == spans.span_of(row.valid_from, row.valid_to)
    assert sorted(row.span for row in rows) == [1, 5]


def test_alive_is_the_interval_test(engine: Engine) -> None:
    """Random lives from seconds to years, asked at random moments and windows: the same rows either way."""
    rng = random.Random(11)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # rows here end years ahead: past the day partitions the collector makes
            after = partitions.days(conn, "sockets")[-1] + timedelta(days=1)
            conn.exec_driver_sql(
                f"CREATE TABLE sockets_later PARTITION OF sockets FOR VALUES FROM ('{after}') TO (MAXVALUE)"
            )
        conn.execute(
            insert(hosts).values(id=1, host_id="h", name="h", agent_version="t", boot_id="", interval_seconds=30)
        )
        conn.execute(insert(host_state).values(host_ref=1, epoch=1, seq=1, complete=True, first_seen=T0, last_seen=T0))
        rows = []
        for serial in range(600):
            start = T0 + timedelta(seconds=rng.randrange(0, 3_000_000))
            life = timedelta(seconds=int(10 ** rng.uniform(0, 8))) if rng.random() > 0.1 else None
            end = start + life if life is not None else None
            rows.append(
                {
                    "host_ref": 1,
                    "key": f"k{serial}",
                    "netns": 1,
                    "proto": "tcp",
                    "family": "inet",
                    "type": "stream",
                    "state": "ESTABLISHED",
                    "owners": 0,
                    "rx_queue": 0,
                    "tx_queue": 0,
                    "valid_from": start,
                    "valid_to": end,
                    "span": spans.span_of(start, end),
                }
            )
        conn.execute(insert(sockets), rows)
    with engine.connect() as conn:
        for _ in range(40):
            start = T0 + timedelta(seconds=rng.randrange(-100_000, 3_200_000))
            end = start + timedelta(seconds=rng.choice([0, 60, 5000, 400_000]))
            plain = and_(sockets.c.valid_from <= end, or_(sockets.c.valid_to.is_(None), sockets.c.valid_to > start))
            if end == start:
                found = set(conn.execute(select(sockets.c.key).where(spans.alive(start))).scalars())
            else:
                found = set(conn.execute(select(sockets.c.key).where(spans.alive(start, end))).scalars())
            expected = set(conn.execute(select(sockets.c.key).where(plain)).scalars())
            assert found == expected, (start, end)
        assert any(conn.execute(select(sockets.c.key).where(spans.alive(T0 + timedelta(days=10)))).scalars())
