"""Reads: one function per question, each returning plain rows (dicts with the documented field names).

"As of T" is ``valid_from <= T AND (valid_to IS NULL OR valid_to > T)``, limited
to hosts observed around T: a host whose last message before T is older than
three of its scan intervals is *unknown* at T, and its sockets are not
reported as open or closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Column, ColumnElement, Connection, case, func, literal_column, or_, select

from sockfleet.collector import rules, spans
from sockfleet.collector.schema import LOSSES, host_addresses, host_state, hosts, observations, sockets
from sockfleet.collector.times import now

T = TypeVar("T")

STALE_INTERVALS = 3
SOCKET_FIELDS = (
    "host",
    "netns",
    "proto",
    "family",
    "type",
    "state",
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "path",
    "peer_inode",
    "inode",
    "uid",
    "user",
    "pid",
    "process",
    "cmdline",
    "owners",
    "rx_queue",
    "tx_queue",
)
HOST_FIELDS = (
    "host",
    "host_id",
    "addresses",
    "agent_version",
    "first_seen",
    "last_seen",
    "status",
    "sockets",
    "gaps",
    "events_lost",
    "clock_skew",
    "last_refusal_at",
    "last_refusal",
)


@dataclass(frozen=True, slots=True)
class Filters:
    host: str | None = None
    port: int | None = None
    proto: str | None = None
    process: str | None = None
    exposed: bool = False
    states: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """Which hosts were observed around a moment, and which were not (by name)."""

    known: dict[int, str]
    unknown: dict[int, str]
    last: dict[int, datetime] = field(default_factory=dict)  # each host's last message at or before the moment


def observed(conn: Connection, at: datetime | None, since: datetime | None = None) -> Observed:
    """Hosts whose last message at or before ``at`` (default now) is at most three intervals old; with
    ``since``, hosts observed at any moment from ``since`` to ``at``."""
    moment = at or now()
    earliest = since or moment
    # One index probe per host (observations by host_ref, taken_at), however long the history.
    last = (
        select(observations.c.taken_at)
        .where(observations.c.host_ref == hosts.c.id, observations.c.taken_at <= moment)
        .order_by(observations.c.taken_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    # Observations removed by retention (collector.retention) leave the host's last one on its row.
    pruned = case((hosts.c.last_pruned_observation <= moment, hosts.c.last_pruned_observation))
    taken_at = func.coalesce(last, pruned).label("taken_at")
    rows = conn.execute(select(hosts.c.id, hosts.c.name, hosts.c.interval_seconds, taken_at)).all()
    known, unknown = {}, {}
    scans = {row.id: row.taken_at for row in rows if row.taken_at is not None}
    for row in rows:
        window = timedelta(seconds=STALE_INTERVALS * row.interval_seconds)
        if row.taken_at is not None and earliest - row.taken_at <= window:
            known[row.id] = row.name
        else:
            unknown[row.id] = row.name
    return Observed(known, unknown, scans)


def sockets_at(
    conn: Connection,
    at: datetime | None,
    filters: Filters,
    only_listening: bool = False,
    hosts_known: Observed | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Sockets open at ``at`` (default: now) on hosts observed then, with the documented fields.

    With ``until``: those open at any time from ``at`` to ``until``, with ``valid_from`` and ``valid_to``.
    """
    seen = hosts_known or observed(conn, at)
    # Now: every host's last known state (the caller flags stale hosts); at T: hosts observed then.
    refs = list(seen.known) + list(seen.unknown) if at is None else list(seen.known)
    conditions = [sockets.c.host_ref.in_(refs), *_lifetime(at, until, only_listening), *_filtered(filters)]
    columns = [hosts.c.name.label("host"), *(sockets.c[name] for name in SOCKET_FIELDS[1:])]
    if until is not None:
        columns += [sockets.c.valid_from, sockets.c.valid_to]
    query = (
        select(*columns)
        .select_from(sockets.join(hosts, hosts.c.id == sockets.c.host_ref))
        .where(*conditions)
        .order_by(
            hosts.c.name,
            sockets.c.proto,
            sockets.c.local_port.asc().nulls_first(),
            sockets.c.path.asc().nulls_first(),
            sockets.c.inode.asc().nulls_first(),
        )
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def _lifetime(at: datetime | None, until: datetime | None, only_listening: bool) -> list[ColumnElement[bool]]:
    if not only_listening:
        return [spans.alive(at, until)]
    # The IN term repeats what listening() implies, in the form the partial listener indexes name: with
    # literal values, which SQLite needs to see that they apply (in every lifetime class's term).
    return [spans.alive(at, until, within=(rules.waiting_sql(sockets.c),)), rules.listening_sql(sockets.c)]


def _filtered(filters: Filters) -> list[ColumnElement[bool]]:
    """The conditions that the command line's filters name."""
    equal = {"host": hosts.c.name, "port": sockets.c.local_port, "proto": sockets.c.proto, "process": sockets.c.process}
    conditions = [
        column == getattr(filters, name) for name, column in equal.items() if getattr(filters, name) is not None
    ]
    if filters.exposed:
        conditions.append(rules.exposed_sql(sockets.c))
    if filters.states is not None:
        conditions.append(sockets.c.state.in_(filters.states))
    return conditions


def host_names(conn: Connection) -> set[str]:
    return set(conn.execute(select(hosts.c.name)).scalars())


def host_name(conn: Connection, host: str) -> str | None:
    """The name of the host named ``host``, or whose id is ``host``; None when there is none."""
    row = conn.execute(
        select(hosts.c.name)
        .where(or_(hosts.c.name == host, hosts.c.host_id == host))
        .order_by((hosts.c.name == host).desc())
    ).first()
    return None if row is None else str(row.name)


def host_rows(conn: Connection, at: datetime | None) -> list[dict[str, Any]]:
    """Every host with its addresses and socket count at ``at``, and whether it was observed then."""
    seen = observed(conn, at)
    moment = at or now()
    addresses = _addresses_at(conn, moment)
    counts = _socket_counts(conn, at)
    gaps = _gap_counts(conn, moment)
    out = []
    seen_at = (host_state.c.first_seen, host_state.c.last_seen)
    with_state = hosts.join(host_state, host_state.c.host_ref == hosts.c.id)
    for row in conn.execute(select(hosts, *seen_at).select_from(with_state).order_by(hosts.c.name)):
        if at is not None and row.first_seen > at:
            continue
        if at is None:
            status = "live" if row.id in seen.known else "stale"
        else:
            status = "observed" if row.id in seen.known else "unknown"
        out.append(
            {
                "host": row.name,
                "host_id": row.host_id,
                "addresses": " ".join(addresses.get(row.id, [])),
                "agent_version": row.agent_version,
                "first_seen": row.first_seen,
                "last_seen": row.last_seen if at is None else seen.last.get(row.id),
                "status": status,
                "sockets": counts.get(row.id, 0) if status != "unknown" else None,
                "gaps": gaps.get(row.id, (0, 0))[0],
                "events_lost": gaps.get(row.id, (0, 0))[1],
                "clock_skew": row.clock_skew,
                "last_refusal_at": row.last_refusal_at,
                "last_refusal": row.last_refusal,
            }
        )
    return out


def _addresses_at(conn: Connection, moment: datetime) -> dict[int, list[str]]:
    """Each host's addresses at ``moment``, in order, each once."""
    rows = conn.execute(
        select(host_addresses.c.host_ref, host_addresses.c.address)
        .where(
            host_addresses.c.valid_from <= moment,
            or_(host_addresses.c.valid_to.is_(None), host_addresses.c.valid_to > moment),
        )
        .order_by(host_addresses.c.address)
    ).all()
    addresses: dict[int, list[str]] = {}
    for row in rows:
        if row.address not in addresses.setdefault(row.host_ref, []):
            addresses[row.host_ref].append(row.address)
    return addresses


def _socket_counts(conn: Connection, at: datetime | None) -> dict[int, int]:
    host = _unindexed(conn, sockets.c.host_ref)  # grouping by an index would walk the whole history in it
    query = select(host, func.count()).where(spans.alive(at)).group_by(host)
    return {row[0]: row[1] for row in conn.execute(query)}


def _unindexed(conn: Connection, column: Column[T]) -> ColumnElement[T]:
    """``column`` as SQLite's planner may not read it from an index (``+sockets.host_ref``): SQLite, without
    statistics, would rather walk an index on it, in its order, over every row of the history than read
    the few rows a partial or lifetime index finds.  Other databases plan from statistics: the column."""
    if conn.dialect.name != "sqlite":
        return column
    return literal_column(f"+{column.table.name}.{column.name}", type_=column.type)


def _gap_counts(conn: Connection, moment: datetime) -> dict[int, tuple[int, int]]:
    """Each host's scans lost (gaps) and times its kernel dropped socket-destroy events, up to ``moment``,
    those of observations removed by retention included."""
    taken_at = _unindexed(conn, observations.c.taken_at)  # the few rows of ix_observations_losses instead
    query = (
        select(observations.c.host_ref, func.sum(observations.c.gaps), func.sum(observations.c.events_lost))
        .where(taken_at <= moment, LOSSES)
        .group_by(observations.c.host_ref)
    )
    counts = {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in conn.execute(query)}
    pruned = select(hosts.c.id, hosts.c.pruned_gaps, hosts.c.pruned_events_lost).where(
        or_(hosts.c.pruned_gaps > 0, hosts.c.pruned_events_lost > 0)
    )
    for ref, gaps, lost in conn.execute(pruned):
        held = counts.get(ref, (0, 0))
        counts[ref] = (held[0] + gaps, held[1] + lost)
    return counts


def recorded(conn: Connection) -> tuple[datetime | None, datetime | None]:
    """The first and the last moment any host was observed: the stretch of history questions can ask about."""
    first, last = conn.execute(select(func.min(observations.c.taken_at), func.max(observations.c.taken_at))).one()
    return first, last
