"""The schema is made only by migrating: one head, upgrade from empty, downgrade round trip, models equal."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from collector import db
from collector.schema import metadata

VIEWS = {"current_sockets", "listeners", "socket_history", "edges"}


def test_one_head() -> None:
    assert len(ScriptDirectory.from_config(db.alembic_config()).get_heads()) == 1


def test_upgrade_from_empty(empty_engine: Engine) -> None:
    assert db.current(empty_engine) is None
    db.migrate(empty_engine)
    assert db.current(empty_engine) == db.head()
    names = set(inspect(empty_engine).get_table_names())
    assert {"hosts", "host_addresses", "sockets", "observations"} <= names
    assert set(inspect(empty_engine).get_view_names()) >= VIEWS


def test_models_equal_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_downgrade_round_trip(engine: Engine) -> None:
    db.downgrade(engine, "base")
    assert db.current(engine) is None
    assert not {"hosts", "sockets"} & set(inspect(engine).get_table_names())
    assert not VIEWS & set(inspect(engine).get_view_names())
    db.migrate(engine)
    assert db.current(engine) == db.head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM listeners")).scalar_one() == 0
