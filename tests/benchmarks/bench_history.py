"""Benchmark: fleet questions over a realistic history, on SQLite and PostgreSQL.

    python -m tests.benchmarks.bench_history --hosts 1000 --sockets 500 --hours 168   # the full week
    python -m tests.benchmarks.bench_history --hosts 1000 --sockets 500 --hours 6     # a quicker look
    python -m tests.benchmarks.bench_history --hours 96 --group 50 --backends postgresql --db URL  # kept

Builds the history a fleet leaves, written in bulk in time order (as the collector would have
written it, with the same columns, lifetime classes and indexes).  Each host has 9 listeners
(0.0.0.0:8000-8008) and a Unix socket pair per 25 sockets (20 of 500) for the whole period, and one debug listener that
moves to another port every four hours on average; the rest of its sockets are TCP
connections, half of them its own calls to the listeners of 8 other hosts (two client processes,
pools of connections) and half the accepted ends of other hosts' calls, so each connection is
stored from both ends.  Connections live a random (geometric) time such that 1% of each host's
sockets close, and as many open, every 30 s.  Every host reports every 30 s (an observation row).

The hosts come in groups of ``--group`` (125), each calling within itself: the first group's history
is made row by row (written with COPY on PostgreSQL) and the database copies it to the other groups,
each host and address moved along by a group, in one pass (the copies' rows open and close at the
same moments as the first group's).  On PostgreSQL the history tables get the day partitions a
collector running through the period would have made, unlogged (the database is thrown away), and
the secondary indexes are made after the rows, as a restore would.

Then it times, through the same functions the CLI uses: ``ports --at`` (the middle of the period),
``talks --at`` (same moment; the whole fleet, and one host), ``history`` of one host over the last
day (and, as its peer, the same rows read in one pass over the host's rows, as before revision 0017;
the two must agree), and ``diff`` between two moments an hour apart.  Each figure is the median of 3
runs, after one run to warm the caches.  PostgreSQL runs with the settings in PG_SETTINGS.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, or_, select, text

from sockfleet.collector import changes, db, flows, partitions, queries, spans
from sockfleet.collector.schema import flows as flow_table
from sockfleet.collector.schema import host_addresses, host_state, hosts, observations, sockets
from sockfleet.collector.store.statements import INSERT_COLUMNS
from sockfleet.collector.talks import Window, edges
from tests import postgres

START = datetime(2026, 11, 1)
STEP = timedelta(seconds=30)
LISTENERS = 10
UPSTREAMS = 8
DEBUG_LIFE = 4 * 3600 / 30  # steps: the debug listener lives four hours on average
# PostgreSQL set up as for a large fleet on this 24 GB machine (the test server's defaults are for
# small test databases: 128 MB of shared buffers, 4 MB of sort memory).
PG_SETTINGS = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "effective_cache_size": "16GB",
    "random_page_cost": "1.1",
}
SOCKET_COLUMNS = (*INSERT_COLUMNS, "valid_to", "span")
FLOW_COLUMNS = ("host_ref", "key", *flows.IDENTITY_COLUMNS, "connections", "since", "valid_from", "valid_to", "span")
OBSERVATION_COLUMNS = (
    "host_ref",
    "epoch",
    "seq",
    "kind",
    "taken_at",
    "received_at",
    "added",
    "removed",
    "changed",
    "complete",
    "gaps",
)


def address(host: int) -> str:
    serial = host + 1  # 10.0.0.1, 10.0.0.2, ..., 10.0.1.0, ...: one address per host
    return f"10.{serial // 65536 % 256}.{serial // 256 % 256}.{serial % 256}"


def host_of(value: str) -> int:
    """The host of an address that ``address`` made."""
    _, high, middle, low = (int(part) for part in value.split("."))
    return high * 65536 + middle * 256 + low - 1


def upstream(host: int, k: int, hosts_count: int) -> int:
    """The host that ``host``'s k-th service call goes to (for each k, every host is called by one other)."""
    peer = (host + 1 + k * max(1, hosts_count // UPSTREAMS)) % hosts_count
    return peer if peer != host or hosts_count == 1 else (host + 1) % hosts_count


class Fleet:
    """Socket intervals of the whole fleet, yielded in the order they open."""

    def __init__(
        self,
        hosts_count: int,
        sockets_per_host: int,
        steps: int,
        rng: random.Random,
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        self.hosts, self.steps, self.rng = hosts_count, steps, rng
        self.flows = flows.Builder(emit)  # the connections' flows, as the store would have kept them
        self.unix_pairs = sockets_per_host // 25
        self.slots = max(UPSTREAMS, (sockets_per_host - LISTENERS - 2 * self.unix_pairs) // 2)
        # 1% of a host's sockets close per step: its own calls and the accepted ends of others' calls.
        self.p_close = min(1.0, sockets_per_host * 0.01 / (2 * self.slots))
        self.serial = 0
        self.ports = [0] * hosts_count

    def _row(
        self,
        host: int,
        moment: datetime,
        end: datetime | None,
        key: str,
        proto: str,
        kind: str,
        local: tuple[str | None, int | None],
        remote: tuple[str | None, int | None],
        path: str | None,
        state: str,
        peer: int | None,
        pid: int,
        process: str,
        inode: int | None = None,
    ) -> tuple[Any, ...]:
        self.serial += 1
        return (
            host + 1,
            moment,
            key,
            1,
            proto,
            "unix" if proto == "unix" else "inet",
            kind,
            inode or self.serial,
            local[0],
            local[1],
            remote[0],
            remote[1],
            path,
            state,
            peer,
            0 if pid < 500 else 1000,
            "root" if pid < 500 else "app",
            pid,
            process,
            f"/usr/bin/{process}",
            1,
            0,
            0,
            None,
            end,
            spans.span_of(moment, end),
        )

    def _life(self, step: int, mean: float | None = None) -> int:
        """The step a socket opened at ``step`` closes at (geometric: a chance each step), maybe past the end."""
        p_close = 1.0 / mean if mean else self.p_close
        if p_close >= 1.0:
            return step + 1
        return step + 1 + int(math.log(1.0 - self.rng.random()) / math.log(1.0 - p_close))

    def _debug_listener(self, host: int, step: int, closes: int) -> tuple[Any, ...]:
        """One listener per host that comes and goes: a debug port on a new number each time."""
        end = START + closes * STEP if closes < self.steps else None
        return self._row(
            host,
            START + step * STEP,
            end,
            f"d{self.serial}",
            "tcp",
            "stream",
            ("0.0.0.0", 9000 + self.serial % 1000),
            (None, None),
            None,
            "LISTEN",
            None,
            300,
            "debug",
        )

    def _connection(self, host: int, slot: int, step: int, closes: int) -> list[tuple[Any, ...]]:
        # Each new connection goes to one of the 8 upstreams at random: a pool grows and shrinks as
        # connections come and go, so that every change moves the flows of both ends.
        k = self.rng.randrange(UPSTREAMS) if step else slot % UPSTREAMS
        peer = upstream(host, k, self.hosts)
        moment = START + step * STEP
        end = START + closes * STEP if closes < self.steps else None
        # The host's next ephemeral port, as the kernel hands them out: a connection lives far shorter than a
        # round of 28,000 of its host's connections, so no two open ones share a port.
        self.ports[host] += 1
        port = 32768 + self.ports[host] % 28000
        process, pid = ("app", 500) if k < UPSTREAMS // 2 else ("worker", 600)
        key = f"c{self.serial}"
        client = self._row(
            host,
            moment,
            end,
            key,
            "tcp",
            "stream",
            (address(host), port),
            (address(peer), 8000 + k),
            None,
            "ESTABLISHED",
            None,
            pid,
            process,
        )
        server = self._row(
            peer,
            moment,
            end,
            key,
            "tcp",
            "stream",
            (address(peer), 8000 + k),
            (address(host), port),
            None,
            "ESTABLISHED",
            None,
            100 + k,
            f"svc{k}",
        )
        return [client, server]

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Socket rows in the order they open (at one moment, listeners first), each with its flow key."""
        for row in self._rows():
            key = self.flows.add(
                row[0], row[1], row[-2], row[3], row[4], row[13], row[18], row[8], row[9], row[10], row[11]
            )
            yield (*row[:-3], key, *row[-2:])
        self.flows.finish()

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        queue: list[tuple[int, int, int]] = []
        for host in range(self.hosts):
            for n in range(LISTENERS - 1):
                yield self._row(
                    host,
                    START,
                    None,
                    f"l{n}",
                    "tcp",
                    "stream",
                    ("0.0.0.0", 8000 + n),
                    (None, None),
                    None,
                    "LISTEN",
                    None,
                    100 + n,
                    f"svc{n}",
                )
            closes = self._life(0, DEBUG_LIFE)
            yield self._debug_listener(host, 0, closes)
            heapq.heappush(queue, (closes, host, -1))
        for host in range(self.hosts):
            for pair in range(self.unix_pairs):
                inode = 10_000_000 + 2 * pair
                yield self._row(
                    host,
                    START,
                    None,
                    f"u{pair}s",
                    "unix",
                    "stream",
                    (None, None),
                    (None, None),
                    "/run/svc0.sock",
                    "ESTABLISHED",
                    inode + 1,
                    100,
                    "svc0",
                    inode,
                )
                yield self._row(
                    host,
                    START,
                    None,
                    f"u{pair}c",
                    "unix",
                    "stream",
                    (None, None),
                    (None, None),
                    None,
                    "ESTABLISHED",
                    inode,
                    500 + pair % 4,
                    "app",
                    inode + 1,
                )
            for slot in range(self.slots):
                closes = self._life(0)
                yield from self._connection(host, slot, 0, closes)
                heapq.heappush(queue, (closes, host, slot))
        while queue and queue[0][0] < self.steps:
            step, host, slot = heapq.heappop(queue)
            if slot < 0:
                closes = self._life(step, DEBUG_LIFE)
                yield self._debug_listener(host, step, closes)
            else:
                closes = self._life(step)
                yield from self._connection(host, slot, step, closes)
            heapq.heappush(queue, (closes, host, slot))


def load(engine: Engine, hosts_count: int, sockets_per_host: int, hours: float, group: int | None = None) -> int:
    """Write the history; the secondary indexes are made after the rows, as a restore would.

    The first ``group`` hosts' history is made row by row and written with COPY (PostgreSQL) or in batches
    of INSERTs (SQLite); the other groups' are copies of it made in the database, each host and address
    moved along by a group.  Without ``group``, every host's history is made on its own.
    """
    group = group or hosts_count
    steps = int(hours * 3600 / STEP.total_seconds())
    end = START + steps * STEP
    postgres_ = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.execute(
            insert(hosts),
            [
                {
                    "id": h + 1,
                    "host_id": f"id-{h}",
                    "name": f"host-{h}",
                    "agent_version": "bench",
                    "boot_id": "",
                    "interval_seconds": 30,
                }
                for h in range(hosts_count)
            ],
        )
        conn.execute(
            insert(host_state),
            [
                {
                    "host_ref": h + 1,
                    "epoch": 1,
                    "seq": steps,
                    "last_taken_at": end,
                    "complete": True,
                    "first_seen": START,
                    "last_seen": end,
                }
                for h in range(hosts_count)
            ],
        )
        conn.execute(
            insert(host_addresses),
            [
                {"host_ref": h + 1, "netns": 1, "interface": "eth0", "address": address(h), "valid_from": START}
                for h in range(hosts_count)
            ],
        )
        if postgres_:
            _day_partitions(conn)
        secondary = _secondary_indexes(conn)
        for name, _ in secondary:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
    phase = Phases()
    versions: list[tuple[Any, ...]] = []

    def emit(version: dict[str, Any]) -> None:
        versions.append(tuple(version[c] for c in FLOW_COLUMNS))
        if len(versions) == 100_000:
            _write(engine, flow_table, FLOW_COLUMNS, versions, postgres_)
            versions.clear()

    fleet = Fleet(group, sockets_per_host, steps, random.Random(7), emit)
    rows = _bulk(engine, sockets, SOCKET_COLUMNS, fleet.rows(), postgres_)
    _write(engine, flow_table, FLOW_COLUMNS, versions, postgres_)
    heartbeats = (
        (h + 1, 1, s + 1, "heartbeat" if s else "snapshot", START + s * STEP, START + s * STEP, 0, 0, 0, True, 0)
        for s in range(steps)
        for h in range(group)
    )
    _bulk(engine, observations, OBSERVATION_COLUMNS, heartbeats, postgres_)
    phase.done(f"{group} hosts' rows made and written")
    copies = hosts_count // group - 1
    if copies:
        for table, columns in (
            (sockets, SOCKET_COLUMNS),
            (flow_table, FLOW_COLUMNS),
            (observations, OBSERVATION_COLUMNS),
        ):
            with engine.begin() as conn:
                _copy_groups(conn, table, columns, group, copies)
        rows *= copies + 1
        phase.done(f"copied to the other {hosts_count - group} hosts")
    # One index per transaction, and SQLite's write-ahead log emptied after each: the log never holds more
    # than one index, and gives its disk back before the next.
    for _, create in secondary:
        with engine.begin() as conn:
            conn.exec_driver_sql(create)
        if not postgres_:
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    phase.done("indexes made")
    with engine.begin() as conn:
        # PostgreSQL's autovacuum would gather statistics on its own after such a load; here it is asked to.
        conn.execute(text("ANALYZE"))
    phase.done("analyzed")
    return rows


class Phases:
    """Prints how long each part of the build took."""

    def __init__(self) -> None:
        self.began = time.perf_counter()

    def done(self, what: str) -> None:
        now = time.perf_counter()
        print(f"  {what} in {now - self.began:.0f} s", flush=True)
        self.began = now


def _day_partitions(conn: Connection) -> None:
    """Day partitions from START on (the database made the days from today on): where a collector running
    through the period would have put the rows.  They are unlogged: the benchmark's database is thrown away."""
    for table in partitions.TABLES:
        first = partitions.days(conn, table)[0]
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{table}_before"')
        day = START.date()
        while day < first:
            conn.exec_driver_sql(
                f'CREATE TABLE "{table}_p{day:%Y%m%d}" PARTITION OF "{table}" '
                f"FOR VALUES FROM ('{day.isoformat()}') TO ('{day + timedelta(days=1)}')"
            )
            day += timedelta(days=1)
        conn.exec_driver_sql(
            f'ALTER TABLE "{table}" ATTACH PARTITION "{table}_before" FOR VALUES FROM (MINVALUE) TO (\'{START.date()}\')'
        )
        for name in conn.execute(partitions.CHILDREN, {"parent": table}).scalars():
            conn.exec_driver_sql(f'ALTER TABLE "{name}" SET UNLOGGED')


def _copy_groups(conn: Connection, table: Table, columns: tuple[str, ...], group: int, copies: int) -> None:
    """Copy the first group's rows of ``table`` to the next ``copies`` groups, in one pass over them."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # hosts exist: no check per row
    else:
        conn.connection.driver_connection.create_function(  # type: ignore[union-attr]
            "moved", 2, lambda value, by: address(host_of(value) + by), deterministic=True
        )
    shift = "copies.c * :group"
    chosen = []
    for column in columns:
        if column == "host_ref":
            chosen.append(f"host_ref + {shift}")
        elif column in ("local_address", "remote_address"):
            chosen.append(f"CASE WHEN {column} LIKE '10.%' THEN {_moved(conn, column, shift)} ELSE {column} END")
        else:
            chosen.append(f'"{column}"')
    quoted = ", ".join(f'"{c}"' for c in columns)
    conn.execute(
        text(
            f"WITH RECURSIVE copies(c) AS (SELECT 1 UNION ALL SELECT c + 1 FROM copies WHERE c < :copies) "
            f"INSERT INTO {table.name} ({quoted}) SELECT {', '.join(chosen)} FROM {table.name}, copies"
        ),
        {"group": group, "copies": copies},
    )


def _moved(conn: Connection, column: str, shift: str) -> str:
    """An address of the first group moved to its host's copy in group ``shift`` hosts on."""
    if conn.dialect.name == "postgresql":
        return f"host(CAST({column} AS inet) + CAST({shift} AS bigint))"
    return f"moved({column}, {shift})"


# The secondary indexes of the big tables as the database holds them, each made once: on PostgreSQL, on the
# partitioned table (made again on every partition) or on a partition alone (the open rows' partial indexes).
SECONDARY_INDEXES = {
    "sqlite": "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
    "('sockets', 'observations', 'flows')",
    "postgresql": "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname IN ('sockets', 'observations', 'flows', 'sockets_open', "
    "'flows_open') AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = c.oid) "
    "AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid)",
}


def _secondary_indexes(conn: Connection) -> list[tuple[str, str]]:
    found = conn.exec_driver_sql(SECONDARY_INDEXES[conn.dialect.name]).all()
    return [(str(name), str(create).replace(" ON ONLY ", " ON ")) for name, create in found]


def _bulk(
    engine: Engine, table: Table, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]], postgres_: bool
) -> int:
    count = 0
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == 100_000:
            count += _write(engine, table, columns, batch, postgres_)
            batch = []
    return count + _write(engine, table, columns, batch, postgres_)


def _write(
    engine: Engine, table: Table, columns: tuple[str, ...], batch: list[tuple[Any, ...]], postgres_: bool
) -> int:
    if not batch:
        return 0
    quoted = ", ".join(f'"{c}"' for c in columns)  # the table's own column names
    with engine.begin() as conn:
        if postgres_:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY {table.name} ({quoted}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in columns)
            conn.exec_driver_sql(f"INSERT INTO {table.name} ({quoted}) VALUES ({marks})", batch)
    return len(batch)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    result = function()  # warms the caches
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        result = function()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result


def one_pass_history(conn: Connection, host: str, since: datetime) -> list[dict[str, Any]]:
    """The peer of ``history --host --since``: the same rows read in one pass over the host's rows in
    ix_sockets_host_ref_valid_from, keeping those that ended after ``since`` (``history`` before revision 0017)."""
    ref = conn.execute(select(hosts.c.id).where(hosts.c.name == host)).scalar()
    columns = [hosts.c.name.label("host"), *(sockets.c[name] for name in changes.HISTORY_FIELDS[1:])]
    query = (
        select(*columns)
        .select_from(sockets.join(hosts, hosts.c.id == sockets.c.host_ref))
        .where(sockets.c.host_ref == ref, or_(sockets.c.valid_to.is_(None), sockets.c.valid_to > since))
        .order_by(sockets.c.valid_from, sockets.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def agree(conn: Any, moment: datetime) -> None:
    """The edges ``talks --at`` reads from flows are those the socket rows make (a window of no length)."""
    fields = (
        "proto",
        "client_host",
        "client_address",
        "client_process",
        "server_host",
        "server_address",
        "server_port",
        "server_process",
        "connections",
        "direction",
    )

    def brief(rows: Sequence[Any]) -> list[tuple[str, ...]]:
        return sorted(tuple(str(row[f]) for f in fields) for row in rows)

    from_flows = brief(edges(conn, Window(moment)))
    if from_flows != brief(edges(conn, Window(moment, moment))):
        raise SystemExit("talks --at: the edges from flows differ from the edges from socket rows")
    print(f"  talks --at: {len(from_flows):,} edges from flows, the same as from the socket rows", flush=True)


def bench(backend: str, url: str, args: argparse.Namespace) -> None:
    engine = db.engine(url)
    db.migrate(engine)
    with engine.connect() as conn:
        loaded_already = conn.execute(text("SELECT count(*) FROM hosts")).scalar()
    started = time.perf_counter()
    group = args.group if 0 < args.group < args.hosts and args.hosts % args.group == 0 else args.hosts
    rows = 0 if loaded_already else load(engine, args.hosts, args.sockets, args.hours, group)
    loaded = time.perf_counter() - started
    middle = START + timedelta(hours=args.hours / 2)
    end = START + timedelta(hours=args.hours)
    with engine.connect() as conn:
        if not rows:
            rows = conn.execute(text("SELECT count(*) FROM sockets")).scalar() or 0
        questions: dict[str, Callable[[], Any]] = {
            "ports --at": lambda: queries.sockets_at(conn, middle, queries.Filters(), only_listening=True),
            "talks --at": lambda: edges(conn, Window(middle)),
            "talks --host --at": lambda: edges(conn, Window(middle), host="host-1"),
            "history --host": lambda: changes.history(conn, "host-1", since=max(START, end - timedelta(days=1))),
            "history, one pass": lambda: one_pass_history(conn, "host-1", max(START, end - timedelta(days=1))),
            "diff": lambda: changes.diff(conn, middle - timedelta(hours=min(1.0, args.hours / 4)), middle),
        }
        agree(conn, middle)
        how = f"loaded in {loaded:.0f} s" if not loaded_already else "loaded before"
        how += f", {_size(conn) / 1e9:.1f} GB"
        print(
            f"{backend}: {args.hosts} hosts x {args.sockets} sockets, {args.hours:g} h of 1% churn every 30 s: "
            f"{rows:,} socket rows, {how}",
            flush=True,
        )
        answers = {}
        for name, question in questions.items():
            if args.only and name not in args.only.split(","):
                continue
            seconds, answers[name] = timed(question)
            result = answers[name]
            size = len(result[0]) if isinstance(result, tuple) else len(result)
            print(f"  {name:16} {seconds * 1000:9.1f} ms   ({size:,} rows)", flush=True)
        peers = [answers[name] for name in ("history --host", "history, one pass") if name in answers]
        if len(peers) == 2 and peers[0] != peers[1]:
            raise SystemExit("history --host: not the rows that ended after --since")
    engine.dispose()


def _size(conn: Connection) -> int:
    """The bytes the database takes on disk."""
    if conn.dialect.name == "postgresql":
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)
    return sum(
        os.path.getsize(f"{conn.engine.url.database}{end}")
        for end in ("", "-wal")
        if os.path.exists(f"{conn.engine.url.database}{end}")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument(
        "--group",
        type=int,
        default=125,
        help="make the history of this many hosts (calling each other) and copy it to the other hosts in groups "
        "of as many (0, or not a divisor of --hosts: every host's history made on its own)",
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--db", help="use this database (loaded if empty, kept afterwards) instead of a new one")
    parser.add_argument("--only", help="time only these questions (comma-separated)")
    args = parser.parse_args(argv)
    if args.db:
        bench(args.db.split(":")[0].split("+")[0], args.db, args)
        return 0
    for backend in args.backends.split(","):
        with postgres.database(backend, PG_SETTINGS) as url:
            bench(backend, url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
