"""Databases: where the default one lives, how to open one to write or to read, and migrating it.

A collector (and ``collector migrate``, ``enroll``, ...) opens its database to write: a SQLite file is
made private (mode 0600, in a folder of mode 0700 when sockfleet makes the folder), and a database that
holds someone else's tables is refused unless ``--init`` says to add sockfleet's beside them.  A
question opens it to read only: it never creates a file or a folder, and reads a database on a
read-only mount as it is.  Whatever goes wrong on the way is one ``UsageError`` line naming the
database, never a driver's traceback.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from sockfleet.collector.errors import CollectorError, UsageError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
DRIVERS = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg", "sqlite": "sqlite"}


def data_dir() -> Path:
    """``$XDG_DATA_HOME/sockfleet``, by default ``~/.local/share/sockfleet``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sockfleet"


def default_url() -> str:
    return f"sqlite:///{data_dir() / 'sockfleet.db'}"


def parse_url(url: str | None) -> URL:
    """``--db`` (or ``$SOCKFLEET_DB``, or the default) as a SQLAlchemy URL; ``postgres://`` is PostgreSQL."""
    if url is not None and not url.strip():
        raise UsageError("--db is empty: give a database URL, or leave it out for the default")
    text = url or os.environ.get("SOCKFLEET_DB") or default_url()
    try:
        parsed = make_url(text)
        parsed.port  # noqa: B018 (a port that is not a number fails here, not at the first connection)
    except (ArgumentError, ValueError) as exc:
        # The text is not repeated: it may hold a password.
        raise UsageError("--db: not a database URL (sqlite:///PATH or postgresql://USER@HOST/DATABASE)") from exc
    return parsed.set(drivername=DRIVERS.get(parsed.drivername, parsed.drivername))


def shown(url: URL) -> str:
    """The URL to print: its password hidden, in the user part or in the query (``?password=``)."""
    secret = {key: "***" for key in url.query if key.lower() in ("password", "passfile", "sslpassword")}
    hidden = url.update_query_dict(secret) if secret else url
    return hidden.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


IDLE_WRITER = "-c idle_in_transaction_session_timeout=10s"


def engine(
    url: str | None = None, *, write: bool = True, create: bool = True, init: bool = False, ping: bool = True
) -> Engine:
    """An engine for ``url``, checked: reachable, a database, and (to write) sockfleet's or empty.

    To read, a SQLite file must exist and is opened read-only.  To write, a SQLite file is created
    private (unless not ``create``), in a folder that must exist (the default folder is made, mode 0700).
    ``ping``: test each PostgreSQL connection taken from the pool with a round trip first; a collector, which
    takes one per message, does without and applies a message again when its connection was found closed
    (``Store.apply``).
    """
    parsed = parse_url(url)
    if parsed.drivername.startswith("sqlite"):
        eng = _sqlite(parsed, write, create)
    else:
        # No JIT: sockfleet's queries are short, and PostgreSQL's JIT compiles a large question's plan for
        # seconds before it runs for a fraction of one.  A question's transactions are read-only.
        # A writer stopped inside a transaction (a collector frozen, or cut off from the database) has its
        # session ended after 10 s (as long as an agent waits for an Ack), so that the rows it locked (a host's
        # state) go to another collector.  A migration is exempt (``_run``).
        options = "-c jit=off " + (IDLE_WRITER if write else "-c default_transaction_read_only=on")
        try:
            eng = create_engine(parsed, pool_pre_ping=ping, connect_args={"options": options, "connect_timeout": 10})
        except (NoSuchModuleError, ImportError) as exc:
            raise UsageError(f"--db {shown(parsed)}: no driver for {parsed.drivername}") from exc
    _check(eng, write, init)
    return eng


def _sqlite(url: URL, write: bool, create: bool) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:"):
        eng = create_engine(url)
        event.listen(eng, "connect", _pragmas)
        return eng
    path = Path(database)
    if not path.exists() and not (write and create):
        raise UsageError(
            f"--db {shown(url)}: no such database (a collector makes it: "
            "`sockfleet collector serve`, or `sockfleet collector migrate`)"
        )
    if write:
        if not path.parent.exists():
            if path.parent != data_dir():
                raise UsageError(f"--db {shown(url)}: the folder {path.parent} does not exist")
            path.parent.mkdir(parents=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        target = ""
    else:
        target = f"file:{path.resolve()}?mode=ro"
    options: dict[str, Any] = {"connect_args": {"timeout": 30}} if write else {"creator": _reader(target)}
    try:
        eng = create_engine(url, **options)
    except NoSuchModuleError as exc:
        raise UsageError(f"no driver for {url.drivername}") from exc
    event.listen(eng, "connect", _pragmas if write else _read_pragmas)
    return eng


def serving(eng: Engine) -> int | None:
    """Claim a SQLite database for this collector process: one collector at a time writes a SQLite file
    (several collectors share a PostgreSQL database).  The claim is a ``flock`` on the database file itself
    (whatever path or link names it), held by the returned descriptor until the process ends; None for other
    databases.  (SQLite's own locks are of another kind, ``fcntl``, which ``flock`` does not touch.)"""
    database = eng.url.database or ""
    if not eng.url.drivername.startswith("sqlite") or database in ("", ":memory:"):
        return None
    try:
        fd = os.open(database, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--db {shown(eng.url)}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(os.fstat(fd))
        os.close(fd)
        raise UsageError(
            f"--db {shown(eng.url)}: another collector ({holder}) serves this SQLite database, and SQLite "
            "takes one; several collectors need a PostgreSQL database"
        ) from None
    return fd


def _flock_holder(stat: os.stat_result) -> str:
    """The process holding a ``flock`` on a file, as /proc/locks tells it, or 'process unknown'."""
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == where and fields[4].isdigit():
                    return f"process {fields[4]}"
    except OSError:
        pass
    return "process unknown"


def _reader(target: str) -> Any:
    """Connections that only read; on a read-only mount, where SQLite cannot make its shared-memory file,
    the file is read as it is (``immutable``)."""

    def connect() -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, uri=True, timeout=30, check_same_thread=False)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn = sqlite3.connect(target + "&immutable=1", uri=True, timeout=30, check_same_thread=False)
        return conn

    return connect


def _pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers run while the collector writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _read_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _check(eng: Engine, write: bool, init: bool) -> None:
    """Reachable, a database at all, and (to write) sockfleet's own or empty unless ``init``."""
    try:
        with eng.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except DBAPIError as exc:
        path = Path(eng.url.database or "")
        if write and path.name and path.exists() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            raise UsageError(
                f"--db {shown(eng.url)}: read-only here (the file or its folder cannot be written); "
                "questions can still read it"
            ) from exc
        raise UsageError(f"--db {shown(eng.url)}: {reason(exc)}") from exc
    if write and tables and "alembic_version" not in tables and not init:
        raise UsageError(
            f"--db {shown(eng.url)} holds {len(tables)} tables of another application; "
            "sockfleet adds its own beside them only when told --init"
        )


@contextmanager
def large_joins(conn: Connection) -> Iterator[None]:
    """Planner settings for a question that joins many rows (``talks``), for its transaction only.

    PostgreSQL cannot estimate how many rows "alive at T" keeps, and a guess of one row makes it pair sockets in
    nested loops, or (guessing 41 listeners of 10,000) sort the flows once by protocol and merge each listener
    join on the protocol alone, testing every listener against every flow: hash joins are right for every size
    here; grouping half a million sockets by connection is done in memory, by hashing, not by sorting.  SQLite
    needs nothing.
    """
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    try:
        yield
    finally:
        if postgres:
            conn.exec_driver_sql("RESET enable_nestloop")
            conn.exec_driver_sql("RESET enable_mergejoin")
            conn.exec_driver_sql("RESET work_mem")


def reason(exc: BaseException) -> str:
    """A database error as one line, its cause first."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split())
    if "file is not a database" in text:
        return "not a SQLite database"
    return text[:300]


# Alembic is loaded only to migrate: a question reads the schema's revision straight from alembic_version.


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision: revisions are numbered in order, ``NNNN_what.py`` (a test holds this to Alembic's
    own view of the head)."""
    numbers = sorted(path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    if not numbers:
        raise CollectorError(f"no migrations in {MIGRATIONS / 'versions'}")
    return numbers[-1]


def current(eng: Engine) -> str | None:
    """The revision the database's schema is at, None for a database sockfleet never migrated."""
    with eng.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)


def migrate(eng: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``head``: the newest)."""
    from alembic import command

    _run(eng, command.upgrade, revision)


def downgrade(eng: Engine, revision: str) -> None:
    from alembic import command

    _run(eng, command.downgrade, revision)


def _run(eng: Engine, step: object, revision: str) -> None:
    config = alembic_config()
    with eng.begin() as conn:
        if conn.dialect.name == "postgresql":
            # A migration may work on rows in Python between two statements for longer than a writer's idle
            # timeout (``IDLE_WRITER``) allows.
            conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        config.attributes["connection"] = conn
        step(config, revision)  # type: ignore[operator]


def require_current(eng: Engine) -> None:
    """Refuse to query a database whose schema is not at the newest revision."""
    try:
        found = current(eng)
    except DBAPIError as exc:
        raise UsageError(f"--db {shown(eng.url)}: {reason(exc)}") from exc
    if found != head():
        state = "not a sockfleet database" if found is None else f"at revision {found}"
        raise UsageError(f"--db {shown(eng.url)} is {state}; a collector makes it (`sockfleet collector migrate`)")
