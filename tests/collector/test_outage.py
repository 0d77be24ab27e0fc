"""PostgreSQL stopped and started while an agent streams: nothing acknowledged is lost, nothing doubled."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests import postgres
from tests.collector.test_e2e import Agent, Collector, ports, wait_for


@pytest.mark.skipif(bool(os.environ.get("SOCKFLEET_TEST_PG_URL")), reason="stops a server it started itself")
def test_database_outage_costs_nothing() -> None:
    with postgres.cluster() as cluster:
        db_url = cluster.database()
        collector = Collector(db_url)
        agent = Agent(collector.port, "outage-host")
        first = socket.create_server(("127.0.0.1", 0))
        second: socket.socket | None = None
        try:
            wait_for(lambda: bool(ports(db_url, "--port", str(first.getsockname()[1]))), "the first listener")
            cluster.stop()  # immediate stop: like a crash of the database server
            second = socket.create_server(("127.0.0.1", 0))
            wait_for(lambda: collector.proc.poll() is None, "the collector to stay up", timeout=3)
            time.sleep(2)  # the agent keeps scanning; the collector answers UNAVAILABLE and it backs off
            cluster.start()
            port = second.getsockname()[1]
            wait_for(lambda: bool(ports(db_url, "--port", str(port))), "the listener opened during the outage",
                     timeout=90)
            assert len(ports(db_url, "--port", str(first.getsockname()[1]))) == 1
        finally:
            agent.stop()
            collector.stop()
            first.close()
            if second is not None:
                second.close()
