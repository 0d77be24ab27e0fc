"""The collector's health (gRPC health checking and ``/healthz``) follows its database; server reflection lists
its services; neither needs an agent token."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests import postgres
from tests.collector.harness import Collector, wait_for
from tests.scrape import free_port, get, scrape

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "sockfleet.v1.Collector")


def check(port: int, service: str) -> int:
    """The health status of ``service``, asked as ``grpc_health_probe`` and Kubernetes ask, without a token."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=20).status
        return status


def services(port: int) -> list[str]:
    """The services the collector lists by reflection (``grpcurl HOST:PORT list``)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([ask]), timeout=20))
        return [service.name for service in answer.list_services_response.service]


def test_health_and_reflection_need_no_token(tmp_path: Path) -> None:
    collector = Collector(f"sqlite:///{tmp_path / 'h.db'}", 0, "--insecure", secured=True)
    try:
        assert "enrolled agents only" in collector.lines[0]
        assert [check(collector.port, service) for service in SERVICES] == [SERVING, SERVING]
        with pytest.raises(grpc.RpcError) as unknown:
            check(collector.port, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        listed = services(collector.port)
        assert {"sockfleet.v1.Collector", "grpc.health.v1.Health"} <= set(listed), listed
        assert "grpc.reflection.v1alpha.ServerReflection" in listed
    finally:
        collector.stop()


@pytest.mark.skipif(bool(os.environ.get("SOCKFLEET_TEST_PG_URL")), reason="stops a server it started itself")
def test_health_follows_the_database() -> None:
    with postgres.cluster() as cluster:
        metrics = free_port()
        collector = Collector(cluster.database(), 0, "--metrics-listen", f"127.0.0.1:{metrics}")
        try:
            assert [check(collector.port, service) for service in SERVICES] == [SERVING, SERVING]
            assert get(metrics, "/healthz") == (200, "ok\n")
            cluster.stop()
            wait_for(lambda: check(collector.port, "") == NOT_SERVING, "NOT_SERVING")
            assert check(collector.port, "sockfleet.v1.Collector") == NOT_SERVING
            status, body = get(metrics, "/healthz")
            assert status == 503 and "database" in body and body.count("\n") == 1, body
            down = scrape(metrics)  # /metrics still answers; hosts by status need the database
            assert "sockfleet_collector_agents_connected" in down
            assert not [name for name in down if name.startswith("sockfleet_collector_hosts")]
            assert collector.proc.poll() is None
            cluster.start()
            wait_for(lambda: check(collector.port, "sockfleet.v1.Collector") == SERVING, "SERVING again", timeout=60)
            assert check(collector.port, "") == SERVING
            assert get(metrics, "/healthz") == (200, "ok\n")
        finally:
            collector.stop()
        said = collector.said()
        assert "not serving: the database does not answer" in said and "the database answers again" in said


def test_stopped_checks_stay_stopped(tmp_path: Path) -> None:
    """Stopping the health checks at any moment of a check (here checking without pause, stopped after a random
    fraction of 10 ms, 200 times) leaves no check running: one that went on into the checks' thread, let go at
    stop, ended in an error printed with its traceback as the collector stopped."""
    import asyncio
    import random

    from sockfleet.collector import db
    from sockfleet.collector.health import Health

    engine = db.engine(f"sqlite:///{tmp_path / 'health.db'}")
    db.migrate(engine)

    async def stop_at_random() -> list[str]:
        left = []
        for _ in range(200):
            health = Health(engine, every=0.0)
            await health.start()
            await asyncio.sleep(random.uniform(0, 0.01))
            await health.stop()
            await asyncio.sleep(0.01)
            task = health.task
            assert task is not None
            if not task.done():
                left.append("still running")
            elif not task.cancelled() and task.exception() is not None:
                left.append(repr(task.exception()))
        return left

    try:
        assert asyncio.run(stop_at_random()) == []
    finally:
        engine.dispose()
