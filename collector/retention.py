"""Retention: history that ended before a horizon is removed, and questions about earlier moments refused.

``sockfleet collector prune --older-than 30d`` (and ``collector serve --retain 30d``, every hour) moves the
horizon to 30 days ago and removes what ended before it: socket and flow rows closed before it, host
addresses held until before it, observations and closed connections dated before it.  Open rows, and rows
that ended at or after the horizon, stay whole, so every question about a moment at or after the horizon
answers as it did before the prune.  A question about an earlier moment is refused (``refuse_before``).

* The horizon is written first, in its own transaction, and never moves back: a question asked while a
  prune runs is refused rather than answered from half-removed history.
* Rows go in batches of ``BATCH``, each its own short transaction, with a pause between two: the collector's
  writes go on while a prune runs (on SQLite, whose one writer the batch holds, every waiting writer gets in
  between two batches).
* On PostgreSQL the history tables are partitioned by day (``collector.partitions``): the days that ended
  before the horizon are dropped whole, and only the rest goes in batches.
* What removed rows still tell questions after the horizon is kept: an observation's host keeps its last
  observation (whether the host was observed at the horizon, and since when) and the scans it dropped on its
  row (``pruned_gaps``, ``pruned_events_lost``, ``last_pruned_observation``); a listener's first time goes to
  ``pruned_listeners`` (``audit`` says when a listener was first seen).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from sockfleet.collector import audit, partitions
from sockfleet.collector.errors import UsageError
from sockfleet.collector.schema import (
    closed_flows,
    flows,
    host_addresses,
    hosts,
    observations,
    pruned_listeners,
    retention,
    sockets,
)
from sockfleet.collector.times import now, parse_duration, rfc3339

BATCH = 2000  # rows a batch removes: a few tens of milliseconds of work, then the writer is free again
# Seconds between two batches.  A writer waiting for SQLite's lock tries again at most every 100 ms: a
# longer pause lets every waiting writer in between two batches.  PostgreSQL locks rows, not the database.
PAUSE = {"sqlite": 0.15}
EVERY = 3600.0  # seconds between two prunes of a serving collector
log = logging.getLogger("sockfleet.collector.retention")

# What a prune removes: each table and its time, older than the horizon.
HISTORY: tuple[tuple[Table, Column[Any]], ...] = (
    (sockets, sockets.c.valid_to),
    (flows, flows.c.valid_to),
    (closed_flows, closed_flows.c.last_at),
    (observations, observations.c.taken_at),
    (host_addresses, host_addresses.c.valid_to),
)
# An observation removed, added to its host's row.
FOLD = (
    update(hosts)
    .where(hosts.c.id == bindparam("ref"))
    .values(
        pruned_gaps=hosts.c.pruned_gaps + bindparam("add_gaps"),
        pruned_events_lost=hosts.c.pruned_events_lost + bindparam("add_lost"),
        last_pruned_observation=case(
            (
                or_(
                    hosts.c.last_pruned_observation.is_(None), hosts.c.last_pruned_observation < bindparam("last_taken")
                ),
                bindparam("last_taken"),
            ),
            else_=hosts.c.last_pruned_observation,
        ),
    )
)


@dataclass(frozen=True, slots=True)
class State:
    """The ``retention`` row: the horizon (None: everything kept), and what the last prune removed."""

    horizon: datetime | None
    last_pruned_at: datetime | None
    rows_removed: int | None
    partitions_removed: int | None


@dataclass(frozen=True, slots=True)
class Pruned:
    horizon: datetime
    rows: int
    partitions: int


def state(conn: Connection) -> State:
    row = conn.execute(select(retention).where(retention.c.id == 1)).first()
    if row is None:
        return State(None, None, None, None)
    return State(row.horizon, row.last_pruned_at, row.rows_removed, row.partitions_removed)


def refuse_before(conn: Connection, moments: dict[str, datetime | None]) -> None:
    """Refuse a question about a moment before the horizon (``moments``: each option and its moment)."""
    horizon = state(conn).horizon
    if horizon is None:
        return
    for option, moment in moments.items():
        if moment is not None and moment < horizon:
            raise UsageError(
                f"{option} {rfc3339(moment)}: history before {rfc3339(horizon)} was removed "
                "(retention); ask about a later moment"
            )


def horizon_of(age: timedelta) -> datetime:
    return now() - age


def age(text: str | None, option: str = "--retain") -> timedelta | None:
    """``--retain 30d`` as a duration; None (keep everything) when not given.  A bare number is refused: what
    a prune removes cannot come back, so its age names its unit."""
    if text is None:
        return None
    if text.strip().replace(".", "", 1).isdigit():
        raise UsageError(f"{option} {text}: give the age with its unit, like 30d or 12h (history it removes is gone)")
    return timedelta(seconds=parse_duration(text, option))


def prune(
    engine: Engine,
    horizon: datetime,
    batch: int = BATCH,
    between: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> Pruned:
    """Remove the history that ended before ``horizon`` (see the module's docstring); ``between`` is called
    between two batches, when the prune holds no lock; ``stop`` ends it between two batches (the next prune
    goes on where it ended)."""
    stop = stop or threading.Event()
    with engine.begin() as conn:
        earlier = state(conn).horizon  # the horizon never moves back: what was before it is gone
        horizon = max(horizon, earlier) if earlier is not None else horizon
        conn.execute(update(retention).where(retention.c.id == 1).values(horizon=horizon))
    rows = dropped = 0
    for table, column in HISTORY:
        if stop.is_set():
            return Pruned(horizon, rows, dropped)
        if partitions.partitioned(engine, table.name):
            first = partitions.first_day(engine, table.name)
            if first is not None:  # what is older than the first day, in batches; then whole days
                rows += _in_batches(engine, table, column, min(horizon, first), batch, between, stop)
            removed, counted = partitions.drop_before(engine, table.name, horizon, _removing(table, column))
            dropped += removed
            rows += counted
        rows += _in_batches(engine, table, column, horizon, batch, between, stop)
    finished = now()
    with engine.begin() as conn:
        conn.execute(
            update(retention)
            .where(retention.c.id == 1)
            .values(last_pruned_at=finished, rows_removed=rows, partitions_removed=dropped)
        )
    return Pruned(horizon, rows, dropped)


def _in_batches(
    engine: Engine,
    table: Table,
    column: Column[Any],
    before: datetime,
    batch: int,
    between: Callable[[], None] | None,
    stop: threading.Event,
) -> int:
    """Delete the rows of ``table`` whose ``column`` is before ``before``, ``batch`` rows per transaction."""
    removed = 0
    while True:
        with engine.begin() as conn:
            _take_turn(conn)
            ids = conn.execute(select(table.c.id).where(column < before).limit(batch)).scalars().all()
            if ids:
                _keep(conn, table, table.c.id.in_(ids))
                removed += conn.execute(delete(table).where(column < before, table.c.id.in_(ids))).rowcount
        if len(ids) < batch or stop.is_set():
            return removed
        if between is not None:
            between()
        time.sleep(PAUSE.get(engine.dialect.name, 0.005))


def _removing(table: Table, column: Column[Any]) -> Callable[[Connection, datetime], int]:
    """For whole partitions about to go: keep what their rows still tell, and count them (earlier than ``before``)."""

    def removing(conn: Connection, before: datetime) -> int:
        _keep(conn, table, column < before)
        return int(conn.execute(select(func.count()).select_from(table).where(column < before)).scalar_one())

    return removing


def _take_turn(conn: Connection) -> None:
    """Two prunes never remove (and count) the same rows: on PostgreSQL they take turns (an advisory lock), on
    SQLite a write that changes nothing takes the database's one write lock before anything is read."""
    if conn.dialect.name == "sqlite":
        conn.execute(update(retention).where(retention.c.id == 1).values(id=retention.c.id))
    else:
        partitions.take_turn(conn)


def _keep(conn: Connection, table: Table, which: ColumnElement[bool]) -> None:
    """What the rows of ``table`` about to go (``which``) tell questions after the horizon: observations
    are added to their hosts' rows, listeners' first times to ``pruned_listeners``."""
    if table is observations:
        o = observations.c
        query = select(o.host_ref, func.sum(o.gaps), func.sum(o.events_lost), func.max(o.taken_at))
        found = [
            {"ref": r[0], "add_gaps": int(r[1] or 0), "add_lost": int(r[2] or 0), "last_taken": r[3]}
            for r in conn.execute(query.where(which).group_by(o.host_ref))
        ]
        if found:
            conn.execute(FOLD, found)
    elif table is sockets:
        s = sockets.c
        keys = (s.host_ref, s.proto, s.local_port, s.path)
        query = select(*keys, func.min(s.valid_from)).where(which, s.state.in_(audit.LISTENED)).group_by(*keys)
        for row in conn.execute(query).all():
            _first_listened(conn, row[0], row[1], row[2], row[3], row[4])


def _first_listened(
    conn: Connection, ref: int, proto: str, port: int | None, path: str | None, first: datetime
) -> None:
    p = pruned_listeners.c
    same = and_(
        p.host_ref == ref, p.proto == proto, p.local_port.is_not_distinct_from(port), p.path.is_not_distinct_from(path)
    )
    held = conn.execute(select(p.id, p.first_seen).where(same)).first()
    if held is None:
        conn.execute(
            insert(pruned_listeners).values(host_ref=ref, proto=proto, local_port=port, path=path, first_seen=first)
        )
    elif first < held.first_seen:
        conn.execute(update(pruned_listeners).where(p.id == held.id).values(first_seen=first))


def maintain(engine: Engine, retain: timedelta | None, stop: threading.Event | None = None) -> Pruned | None:
    """What a serving collector does every so often: day partitions ahead, and a prune when it retains."""
    partitions.make_ahead(engine)
    if retain is None:
        return None
    return prune(engine, horizon_of(retain), stop=stop)


def ready(engine: Engine, retain: str | None) -> timedelta | None:
    """Before a collector serves: ``--retain`` checked, and day partitions ahead (a message always has one)."""
    kept = age(retain)
    partitions.make_ahead(engine)
    return kept


async def keep(engine: Engine, retain: timedelta | None, every: float = EVERY) -> None:
    """Run ``maintain`` now and every ``every`` seconds, in a thread (the event loop never waits on it);
    cancelled, it stops the prune under way between two batches."""
    stop = threading.Event()
    try:
        while True:
            try:
                pruned = await asyncio.to_thread(maintain, engine, retain, stop)
            except Exception as exc:  # the next round tries again; ingest goes on meanwhile
                log.warning("retention failed, tried again in an hour: %s", " ".join(str(exc).split())[:300])
            else:
                if pruned is not None:
                    log.info(
                        "history before %s removed: %d rows, %d partitions",
                        rfc3339(pruned.horizon),
                        pruned.rows,
                        pruned.partitions,
                    )
            await asyncio.sleep(every)
    finally:
        stop.set()
