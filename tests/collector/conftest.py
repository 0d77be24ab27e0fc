"""Every collector test that takes ``engine`` runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sockfleet.collector import db
from tests import postgres
from tests.collector.harness import Collector
from tests.collector.network import Network


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    with postgres.cluster() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sockfleet.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    return cluster.database()


@pytest.fixture
def empty_engine(db_url: str) -> Iterator[Engine]:
    engine = db.engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    db.migrate(empty_engine)
    return empty_engine


@pytest.fixture
def collector(db_url: str) -> Iterator[Collector]:
    running = Collector(db_url)
    yield running
    if running.proc.poll() is None:
        running.stop()


@pytest.fixture
def network() -> Iterator[Network]:
    """Hosts on network namespaces (root only)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root")
    net = Network()
    try:
        yield net
    finally:
        net.close()
