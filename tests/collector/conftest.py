"""Every collector test that takes ``engine`` runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from collector import db
from tests import postgres


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
