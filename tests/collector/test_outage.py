"""PostgreSQL stopped and started while an agent streams: the stored history equals the ground truth."""

from __future__ import annotations

import os
import time

import pytest

from sockfleet.collector import convert, db, queries
from sockfleet.collector.store import Store
from tests import postgres
from tests.collector import fleet
from tests.collector.fleet import at
from tests.collector.harness import Agent, Collector, ask, ports, wait_for
from tests.collector.truth import Truth


@pytest.mark.skipif(bool(os.environ.get("SOCKFLEET_TEST_PG_URL")), reason="stops a server it started itself")
def test_database_outage_costs_nothing() -> None:
    with postgres.cluster() as cluster:
        db_url = cluster.database()
        collector = Collector(db_url)
        agent = Agent(collector.port, "outage-host")
        truth = Truth()
        try:
            wait_for(lambda: "outage-host" in ask(db_url, "hosts").stdout, "the first snapshot")
            first = truth.open()
            wait_for(lambda: bool(ports(db_url, "--port", str(first))), "the first listener")
            cluster.stop()  # immediate stop: like a crash of the database server
            second = truth.open()
            time.sleep(1)
            truth.close(first)
            time.sleep(1)  # the agent keeps scanning; the collector answers UNAVAILABLE and it backs off
            assert collector.proc.poll() is None
            cluster.start()
            wait_for(
                lambda: bool(ports(db_url, "--port", str(second))), "the listener opened during the outage", timeout=90
            )
            time.sleep(1)
            truth.check(db_url, "outage-host", interval=0.5)
        finally:
            agent.stop()
            collector.stop()
            truth.close_all()


@pytest.mark.skipif(bool(os.environ.get("SOCKFLEET_TEST_PG_URL")), reason="restarts a server it started itself")
def test_a_message_after_a_database_restart_is_applied_on_a_new_connection() -> None:
    """The collector's engine takes connections from its pool without a round trip to test them first: the first
    message after PostgreSQL restarted finds its connection closed, and is applied again on a new one."""
    with postgres.cluster() as cluster:
        engine = db.engine(cluster.database(), ping=False)
        try:
            db.migrate(engine)
            store = Store(engine)
            ref = store.hello(convert.greeting(fleet.hello("restarted")))
            assert store.apply(ref, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80)]))).acked
            cluster.stop()
            cluster.start()
            outcome = store.apply(ref, convert.scan(fleet.delta(2, at(1), added=[fleet.tcp_listener(81)])))
            assert outcome.acked and not outcome.replay
            with engine.connect() as conn:
                listening = queries.sockets_at(conn, None, queries.Filters(), only_listening=True)
            assert sorted(r["local_port"] for r in listening) == [80, 81]
        finally:
            engine.dispose()
