"""Databases: where the default one lives, how to open one, and migrating it with Alembic."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from collector.errors import CollectorError, UsageError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def data_dir() -> Path:
    """``$XDG_DATA_HOME/sockfleet``, by default ``~/.local/share/sockfleet``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sockfleet"


def default_url() -> str:
    return f"sqlite:///{data_dir() / 'sockfleet.db'}"


def engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: the SQLite file in the data directory)."""
    url = url or os.environ.get("SOCKFLEET_DB") or default_url()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"--db {url!r} is not a database URL (sqlite:///PATH or postgresql+psycopg://...)") from exc
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            eng = create_engine(parsed, connect_args={"timeout": 30})
        except NoSuchModuleError as exc:
            raise UsageError(f"no driver for {parsed.drivername}") from exc
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    try:
        # No JIT: sockfleet's queries are short, and PostgreSQL's JIT compiles a large question's plan for
        # seconds before it runs for a fraction of one.
        return create_engine(parsed, pool_pre_ping=True, connect_args={"options": "-c jit=off"})
    except (NoSuchModuleError, ImportError) as exc:
        raise UsageError(f"no driver for {parsed.drivername}: {exc}") from exc


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers run while the collector writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise CollectorError(f"migrations have {len(heads)} heads; expected one")
    return heads[0]


def current(eng: Engine) -> str | None:
    with eng.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(eng: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``head``: the newest)."""
    _run(eng, command.upgrade, revision)


def downgrade(eng: Engine, revision: str) -> None:
    _run(eng, command.downgrade, revision)


def _run(eng: Engine, step: object, revision: str) -> None:
    config = alembic_config()
    with eng.begin() as conn:
        config.attributes["connection"] = conn
        step(config, revision)  # type: ignore[operator]


def require_current(eng: Engine) -> None:
    """Refuse to query a database whose schema is not at the newest revision."""
    try:
        found = current(eng)
    except Exception as exc:
        raise CollectorError(f"cannot open the database: {exc}") from exc
    if found != head():
        state = "empty" if found is None else f"at revision {found}"
        raise CollectorError(f"the database is {state}; run `sockfleet collector migrate` first")
