"""Which collector applies a host's messages, when several share one PostgreSQL database.

Each hello takes the host's lease: its number goes up by one, the collector's name is written as the holder,
and the claim lapses ``hold`` after the last message the holder applied (three of the host's intervals,
from 2 s to 10 minutes).  A hello for a host whose lease another collector holds, unlapsed, is refused as
unavailable: that collector is still applying the host, and the agent tries again (elsewhere, or later).
Once the claim lapses (its collector died or its stream went quiet), or at once when its holder was a
process of the same machine and process namespace that has ended, any collector may take it.  A stream
that finds the host's lease taken by a newer stream stops at its next message or step, before writing
anything (``Lease.check``, in the transaction that locks the host's ``host_state`` row), so two streams never
interleave one host's history.  A stream's end gives its lease back at once.

Lapse times are in the database's clock (PostgreSQL's ``now()``), so collectors whose clocks disagree
still agree on when a claim lapses.  Taking a lease waits at most 2 s for that row:
a collector stuck inside a transaction holds up only that host, never every hello; and once the host's
claim has lapsed and the stuck session has waited on its collector for 10 s, the hello ends that session
(``release_frozen``) and takes the host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from sockfleet.collector import convert
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import host_state, hosts

MIN_HOLD = timedelta(seconds=2)
MAX_HOLD = timedelta(minutes=10)  # a host scanned hourly is not kept from every other collector for hours
INTERVALS_HELD = 3  # a claim lapses this many of the host's intervals after its last message
SHORT_LOCK_WAIT = text("SET LOCAL lock_timeout = '2s'")  # while a lease is taken (PostgreSQL)
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout
# A session waiting this long on its collector, inside a transaction, is frozen.  (A COPY that still sends rows,
# slowly, waits on its collector too between them: it could be taken for frozen once its host's claim has
# lapsed, which means its agent has left already.  The collector's COPYs are one message's rows.)
FROZEN = timedelta(seconds=10)
# The session that holds a host's row locked (its transaction id is the row's xmax) and has waited on its
# client, inside that transaction, for longer than ``waited`` while the host's claim has lapsed: ended.
FROZEN_HOLDER = text(
    """
    SELECT pg_terminate_backend(a.pid) AS ended, a.pid, extract(epoch FROM now() - a.state_change) AS waited,
        a.state
    FROM host_state s
    JOIN hosts h ON h.id = s.host_ref
    JOIN pg_stat_activity a ON a.backend_xid = s.xmax
    WHERE h.host_id = :host_id
      AND a.datname = current_database()
      AND a.wait_event = 'ClientRead'
      AND a.state IN ('idle in transaction', 'active')
      AND a.state_change < now() - :waited
      AND (s.lease_until IS NULL OR s.lease_until < timezone('UTC', now()))
    """
)

log = logging.getLogger("sockfleet.collector")

STATE = host_state.c
HOST_LEASE = select(STATE.host_ref.label("id"), STATE.lease, STATE.lease_holder, STATE.lease_until)
LEASE_BY_ID = (
    HOST_LEASE.join_from(host_state, hosts, hosts.c.id == STATE.host_ref)
    .where(hosts.c.host_id == bindparam("host_id"))
    .with_for_update(of=host_state)
)
LEASE_FOR_UPDATE = HOST_LEASE.where(STATE.host_ref == bindparam("ref")).with_for_update()
TAKE = (
    update(host_state)
    .where(STATE.host_ref == bindparam("ref"))
    .values(lease=bindparam("number"), lease_holder=bindparam("holder"), lease_until=bindparam("until"))
)
EXTEND = (
    update(host_state)
    .where(STATE.host_ref == bindparam("ref"), STATE.lease == bindparam("number"))
    .values(lease_until=bindparam("until"))
)
GIVE_BACK = (
    update(host_state)
    .where(STATE.host_ref == bindparam("ref"), STATE.lease == bindparam("number"))
    .values(lease_holder=None, lease_until=None)
)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _machine() -> str:
    """This boot of this machine and this process namespace, in 8 hex digits: two collectors that share a
    host name (clones, containers) but not these cannot take each other's process ids for their own."""
    try:
        space = os.readlink("/proc/self/ns/pid")
    except OSError:
        space = ""
    seen = _read("/proc/sys/kernel/random/boot_id").strip() + space.encode()
    return hashlib.sha256(seen).hexdigest()[:8]


def _started(pid: int) -> str | None:
    """A running process's start time (clock ticks after boot, ``/proc/PID/stat``); None if there is no such
    process, or it has ended and waits to be reaped."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def holder_name(pid: int | None = None) -> str:
    """A collector process as the holder of leases: its machine's name, process id, start time (a process id
    comes back after a restart) and the boot and process namespace it runs in."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()[:200]}/{pid}/{_started(pid) or secrets.token_hex(4)}/{_machine()}"


def gone(holder: str) -> bool:
    """Whether a holder is known to have ended: a process of this machine, boot and process namespace that no
    longer runs.  Any other holder is taken for alive until its claim lapses."""
    parts = holder.split("/")  # a host name holds no "/"
    if len(parts) != 4 or parts[0] != socket.gethostname()[:200] or parts[3] != _machine():
        return False
    if not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 9:
        return False
    return _started(int(parts[1])) != parts[2]


def hold_for(interval: float) -> timedelta:
    """How long a claim outlives the holder's last message, for a host scanning every ``interval`` seconds."""
    return min(MAX_HOLD, max(MIN_HOLD, timedelta(seconds=INTERVALS_HELD * min(interval, 86_400))))


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease one stream holds: its number, its holder, how long each message extends it, how far the
    database's clock is ahead of the collector's, and whether it was taken from another collector (whose
    stream's last messages this one must not build on)."""

    number: int
    holder: str
    hold: timedelta
    ahead: timedelta = timedelta(0)
    taken_over: bool = False

    def check(self, host: Any) -> None:
        """Refuse to apply a message of a host that a newer stream took (``host``: its row, locked)."""
        if host.lease != self.number:
            raise RejectedMessage(
                f"another stream took this host (its collector: {host.lease_holder or 'none now'}); "
                "this stream ends and its agent connects again",
                "ABORTED",
            )

    def until(self) -> datetime:
        """When the claim lapses if nothing more is applied, in the database's clock."""
        return convert.now() + self.ahead + self.hold

    def hold_on(self, conn: Connection, ref: int) -> None:
        """In a transaction about to write host ``ref``: lock its row, check the lease, and extend it."""
        self.check(conn.execute(LEASE_FOR_UPDATE, {"ref": ref}).one())
        conn.execute(EXTEND, {"ref": ref, "number": self.number, "until": self.until()})


def claim(
    engine: Engine, host_id: str, holder: str, hold: timedelta, alone: bool = False, freeing: bool = False
) -> tuple[int, Lease] | None:
    """Take the lease of the host ``host_id`` for ``holder``, unless another collector holds it, unlapsed and
    alive (``alone``: no other collector can be, as on SQLite); None for a host not recorded yet.  When the
    host's row stays locked by a session frozen inside its transaction, that session is ended and the lease
    taken (``release_frozen``; ``freeing``: this is the try after it)."""
    try:
        with engine.begin() as conn:
            now, ahead = _clock(conn)
            row = conn.execute(LEASE_BY_ID, {"host_id": host_id}).first()
            if row is None:
                return None
            other = row.lease_holder is not None and row.lease_holder != holder
            held = other and row.lease_until is not None and row.lease_until > now
            if held and not alone and not gone(row.lease_holder):
                left = (row.lease_until - now).total_seconds()
                raise RejectedMessage(
                    f"the collector {row.lease_holder} is applying this host's stream (its claim lapses in "
                    f"{left:.0f} s unless it goes on); connect again later or to another collector",
                    "UNAVAILABLE",
                )
            number = row.lease + 1
            conn.execute(TAKE, {"ref": row.id, "number": number, "holder": holder, "until": now + hold})
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        if not freeing and release_frozen(engine, host_id):
            return claim(engine, host_id, holder, hold, alone, freeing=True)
        raise RejectedMessage(
            "another collector is writing this host; connect again later or to another collector", "UNAVAILABLE"
        ) from exc
    return int(row.id), Lease(number, holder, hold, ahead, taken_over=other)


def release_frozen(engine: Engine, host_id: str) -> bool:
    """End the database session that holds the host's row when it has waited on its collector for longer than
    ``FROZEN`` and the host's claim has lapsed: a collector stopped, or cut off from the database, inside a
    transaction.  PostgreSQL's own idle-in-transaction timeout does not cover every such session (one that
    stopped half-way through a pipeline, or after a pipeline's closing flush, waits with no timer).  True if
    one was ended; False when there was none, or this role may not end it (then the claim waits for the
    holder's own timeout)."""
    if engine.dialect.name != "postgresql":
        return False
    try:
        with engine.begin() as conn:
            conn.execute(SHORT_LOCK_WAIT)  # a table lock (a migration) holds this look no longer than the claim
            found = conn.execute(FROZEN_HOLDER, {"host_id": host_id, "waited": FROZEN}).all()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return False
        said = str(exc.orig).strip().splitlines()[0]
        log.warning("host %s: could not end the frozen database session holding its row: %s", host_id, said)
        return False
    for session in found:
        log.warning(
            "host %s: %s database session %d, which held the host's row and had waited %.0f s on its "
            "collector (%s); the host's claim had lapsed",
            host_id,
            "ended" if session.ended else "could not end",
            session.pid,
            session.waited,
            session.state,
        )
    return any(session.ended for session in found)


def _clock(conn: Connection) -> tuple[datetime, timedelta]:
    """The database's time (UTC), and how far it is ahead of the collector's; on PostgreSQL, the lock wait of
    this transaction is bounded as well."""
    mine = convert.now()
    if conn.dialect.name != "postgresql":
        return mine, timedelta(0)
    conn.execute(SHORT_LOCK_WAIT)
    theirs: datetime = conn.execute(select(func.timezone("UTC", func.statement_timestamp()))).scalar_one()
    return theirs, theirs - mine


def holders(conn: Connection) -> dict[str, int]:
    """Each collector applying hosts now (its claims unlapsed), and how many."""
    postgresql = conn.dialect.name == "postgresql"
    lapse = func.timezone("UTC", func.now()) if postgresql else bindparam("now", convert.now())
    query = (
        select(STATE.lease_holder, func.count())
        .where(STATE.lease_holder.is_not(None), STATE.lease_until > lapse)
        .group_by(STATE.lease_holder)
        .order_by(STATE.lease_holder)
    )
    return {str(holder): int(count) for holder, count in conn.execute(query)}


def give_back(engine: Engine, ref: int, lease: Lease) -> None:
    """End a stream's claim on its host (unless a newer stream took the host meanwhile)."""
    with engine.begin() as conn:
        conn.execute(GIVE_BACK, {"ref": ref, "number": lease.number})
