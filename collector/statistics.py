"""Planner statistics of the open partitions kept fresh by a serving collector (PostgreSQL).

A group of deltas closes its sockets and flows by joining arrays of (host, key) to the open rows
(``store.statements.CLOSE_KEYS_MANY``).  PostgreSQL plans that join from the open partition's statistics: from a
partition never analyzed, or analyzed while it held a small part of its rows, it estimates a few dozen open
rows and hashes every open row of the fleet for each group instead of looking each key up in the unique
index.  Measured here with 100 hosts of 1,000 sockets and a group of 64 deltas: 61 ms of the database's time
for the group's close before the partition is analyzed, 5.8 ms after (``tests/collector/test_statistics.py``
shows both plans).  Autovacuum analyzes a table a minute or so after it grew by a tenth; a fleet that
connects all at once (a new install, a restore, many hosts added) fills the partition in seconds, and its
collectors then spend four times the database's CPU on each delta until then.

So a serving collector looks at both open partitions every ``EVERY`` seconds and analyzes one that changed
by more rows than it held when it was last analyzed (and by at least ``LEAST`` rows), unless anyone analyzed
it in the last ``RESTED`` seconds.  Collectors sharing a database take turns (a transaction's advisory lock;
one that finds it taken leaves the work to the other).  An analysis waits at most ``LOCK_TIMEOUT`` for a lock
(another session's VACUUM or index build): it is tried again at the next look, and a stopping collector
never waits on it.  A partition the database role may not analyze (not its owner), or that is not there, is
left to autovacuum, said once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine, bindparam, text
from sqlalchemy.exc import DBAPIError

from sockfleet.collector.db import reason

EVERY = 5.0  # seconds between two looks
LEAST = 10_000  # rows changed since the last analysis before a partition is analyzed again
RESTED = 60  # seconds after any analysis of a partition (ours, another collector's, autovacuum's) before the next
LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '1s'")
OPEN_PARTITIONS = ("sockets_open", "flows_open")
TURN = text("SELECT pg_try_advisory_xact_lock(8317976349707625830)")  # "sockflee" + 1 (partitions.TURN + 1)
CHANGED = text(
    "SELECT c.reltuples, s.n_mod_since_analyze, pg_has_role(c.relowner, 'USAGE') AS owned, "
    "coalesce(greatest(s.last_analyze, s.last_autoanalyze) > now() - make_interval(secs => :rested), false) "
    "AS rested FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(:table)"
).bindparams(bindparam("table"), bindparam("rested"))
# Constant text, one per partition: ANALYZE takes no bound table name.
ANALYZE = {table: text(f"ANALYZE {table}") for table in OPEN_PARTITIONS}
log = logging.getLogger("sockfleet.collector")


@dataclass(slots=True)
class Keeper:
    """What a serving collector knows of the open partitions' statistics between two looks."""

    engine: Engine
    refused: set[str] = field(default_factory=set)  # partitions missing or not this role's to analyze, said once

    def stale(self) -> list[str]:
        """The open partitions that changed by more rows than they held when last analyzed, and were not
        analyzed in the last ``RESTED`` seconds."""
        found = []
        with self.engine.connect() as conn:
            for table in OPEN_PARTITIONS:
                if table in self.refused:
                    continue
                row = conn.execute(CHANGED, {"table": table, "rested": RESTED}).one_or_none()
                if row is None or not row.owned:
                    self.refused.add(table)
                    why = "no such table" if row is None else "not its owner"
                    log.info("cannot analyze %s (%s): its statistics are left to autovacuum", table, why)
                    continue
                held, changed = max(0.0, float(row.reltuples)), int(row.n_mod_since_analyze or 0)
                if changed >= LEAST and changed > held and not row.rested:
                    found.append(table)
        return found

    def refresh(self) -> list[str]:
        """Analyze the stale open partitions, unless another collector is at it; the partitions analyzed."""
        stale = self.stale()
        if not stale:
            return []
        with self.engine.begin() as conn:
            if not conn.execute(TURN).scalar_one():
                return []
            conn.execute(LOCK_TIMEOUT)
            for table in stale:
                conn.execute(ANALYZE[table])
        return stale


async def keep(engine: Engine, every: float = EVERY) -> None:
    """Refresh the open partitions' statistics now and every ``every`` seconds, in a thread.  A failure is
    tried again at the next look (ingest goes on meanwhile) and said when it differs from the last one."""
    keeper = Keeper(engine)
    said = ""
    while True:
        try:
            await asyncio.to_thread(keeper.refresh)
            said = ""
        except Exception as exc:
            failure = reason(exc) if isinstance(exc, DBAPIError) else f"{type(exc).__name__}: {exc}"
            if failure != said:
                log.info("could not refresh the open partitions' statistics: %s", failure)
            said = failure
        await asyncio.sleep(every)
