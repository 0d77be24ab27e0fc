"""PostgreSQL's day partitions of the history tables: listing them, making them ahead, dropping old ones whole.

Migration 0014 partitions four tables by time, each in the same layout::

    sockets, flows       by valid_to:  <table>_open      open rows (valid_to null; the default partition)
    observations         by taken_at   <table>_pYYYYMMDD [day, day + 1), UTC
    closed_flows         by last_at    <table>_before    every time earlier than the first day partition

A closed row lives in the partition of the day it ended, so "history older than the horizon" is whole
partitions but for the horizon's own day.  Day partitions are made ``DAYS_AHEAD`` days ahead (by the
migration, then by a serving collector at start and every hour): a row always has a partition to go to,
and ``<table>_before`` takes rows that an agent replays late.  A partition's name is its range; names are
made here and in the migration (frozen there) only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import Connection, Engine, bindparam, text

from sockfleet.collector.times import now

DAYS_AHEAD = 7
TABLES = ("sockets", "flows", "observations", "closed_flows")
DAY = re.compile(r"_p(\d{8})$")
LOCK_TIMEOUT = "10s"  # how long a change of partitions waits for the tables; it is tried again later
# Collectors sharing one database take turns to change partitions or prune (a transaction's advisory lock).
TURN = text("SELECT pg_advisory_xact_lock(8317976349707625829)")  # "sockflee", as a number
CHILDREN = text(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = CAST(:parent AS regclass)"
).bindparams(bindparam("parent"))

PARTITIONED = text("SELECT 1 FROM pg_partitioned_table WHERE partrelid = CAST(:table AS regclass)").bindparams(
    bindparam("table")
)


@dataclass(frozen=True, slots=True)
class Layout:
    """A partitioned table's day partitions: how many, the first and the last day."""

    table: str
    days: int
    oldest: date | None
    newest: date | None


def take_turn(conn: Connection) -> None:
    """Wait for other collectors' partition changes and prune batches (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(TURN)


def partitioned(engine: Engine, table: str) -> bool:
    """Whether ``table`` is partitioned by day (on PostgreSQL, from revision 0014 on)."""
    if engine.dialect.name != "postgresql" or table not in TABLES:
        return False
    with engine.connect() as conn:
        return conn.execute(PARTITIONED, {"table": table}).first() is not None


def days(conn: Connection, table: str) -> list[date]:
    """The days of ``table``'s day partitions, in order."""
    found = []
    for name in conn.execute(CHILDREN, {"parent": table}).scalars():
        match = DAY.search(name)
        if match and name == f"{table}_p{match.group(1)}":
            found.append(datetime.strptime(match.group(1), "%Y%m%d").date())
    return sorted(found)


def layouts(engine: Engine) -> list[Layout]:
    """Each partitioned table's day partitions (none on SQLite)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        out = []
        for table in TABLES:
            held = days(conn, table)
            out.append(Layout(table, len(held), held[0] if held else None, held[-1] if held else None))
    return out


def first_day(engine: Engine, table: str) -> datetime | None:
    """The start of ``table``'s first day partition: ``<table>_before`` holds what is older."""
    with engine.connect() as conn:
        held = days(conn, table)
    return datetime.combine(held[0], time()) if held else None


def make_ahead(engine: Engine, today: date | None = None, ahead: int = DAYS_AHEAD) -> int:
    """Make the day partitions missing from the newest one to ``ahead`` days after today; returns how many."""
    if engine.dialect.name != "postgresql":
        return 0
    last = (today or now().date()) + timedelta(days=ahead)
    made = 0
    for table in (table for table in TABLES if partitioned(engine, table)):
        with engine.begin() as conn:
            take_turn(conn)
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            held = days(conn, table)
            day = held[-1] + timedelta(days=1) if held else (today or now().date())
            while day <= last:
                following = day + timedelta(days=1)
                conn.exec_driver_sql(
                    f'CREATE TABLE "{table}_p{day:%Y%m%d}" PARTITION OF "{table}" '
                    f"FOR VALUES FROM ('{day.isoformat()}') TO ('{following.isoformat()}')"
                )
                made += 1
                day = following
    return made


def drop_before(
    engine: Engine, table: str, horizon: datetime, removing: Callable[[Connection, datetime], int]
) -> tuple[int, int]:
    """Drop the day partitions of ``table`` that end at or before ``horizon``; returns how many, and the rows
    they held.  ``removing(conn, before)`` is told of the rows about to go (those earlier than ``before``) and
    counts them.

    One short transaction: the partitions to go are locked against late rows and counted, then
    ``<table>_before`` is detached, the days dropped, and ``<table>_before`` (emptied) attached again to
    cover every time before the first day kept.  Detaching holds the table for milliseconds; creating the
    range again reads only ``<table>_before``, which batches have emptied.
    """
    with engine.begin() as conn:
        take_turn(conn)
        gone = [day for day in days(conn, table) if datetime.combine(day + timedelta(days=1), time()) <= horizon]
        if not gone:
            return 0, 0
        kept_from = gone[-1] + timedelta(days=1)
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for name in (f"{table}_before", *(f"{table}_p{day:%Y%m%d}" for day in gone)):
            conn.exec_driver_sql(f'LOCK TABLE "{name}" IN SHARE MODE')
        rows = removing(conn, datetime.combine(kept_from, time()))
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{table}_before"')
        for day in gone:
            conn.exec_driver_sql(f'DROP TABLE "{table}_p{day:%Y%m%d}"')
        conn.exec_driver_sql(f'DELETE FROM "{table}_before"')  # noqa: S608 (a name made here; no values)
        conn.exec_driver_sql(
            f'ALTER TABLE "{table}" ATTACH PARTITION "{table}_before" '
            f"FOR VALUES FROM (MINVALUE) TO ('{kept_from.isoformat()}')"
        )
    return len(gone), rows
