"""Which collector applies a host's messages, when several share one PostgreSQL database.

Each hello takes the host's lease: its number goes up by one, the collector's name is written as the holder,
and the claim lapses ``hold`` after the last message the holder applied (a few of the host's intervals).
A hello for a host whose lease another collector holds, unlapsed, is refused as unavailable: that
collector is still applying the host, and the agent tries again (elsewhere, or later).  Once the claim
lapses (its collector died or its stream went quiet) any collector may take it, and a stream that finds
the host's lease taken by a newer stream stops at its next message, before writing anything
(``Lease.check``, in the transaction that locks the host's row), so two streams never interleave one
host's history.  A stream's end gives its lease back at once.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, update

from sockfleet.collector import convert
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import hosts

MIN_HOLD = timedelta(seconds=2)
INTERVALS_HELD = 3  # a claim lapses this many of the host's intervals after its last message

LEASE_FOR_UPDATE = (
    select(hosts.c.lease, hosts.c.lease_holder, hosts.c.lease_until)
    .where(hosts.c.id == bindparam("ref"))
    .with_for_update()
)
TAKE = (
    update(hosts)
    .where(hosts.c.id == bindparam("ref"))
    .values(lease=bindparam("number"), lease_holder=bindparam("holder"), lease_until=bindparam("until"))
)
GIVE_BACK = (
    update(hosts)
    .where(hosts.c.id == bindparam("ref"), hosts.c.lease == bindparam("number"))
    .values(lease_holder=None, lease_until=None)
)


def holder_name(pid: int | None = None) -> str:
    """A collector process as the holder of leases: its machine, process id and start time (a process id comes
    back after a restart; with its start time it names one process)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()[:200]}/{pid}/{_started(pid) or secrets.token_hex(4)}"


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks after boot, ``/proc/PID/stat``), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def gone(holder: str) -> bool:
    """Whether a holder is known to have ended: a process of this machine that no longer runs.  (A holder on
    another machine is taken for alive until its claim lapses.)"""
    parts = holder.split("/")  # a host name holds no "/"
    if len(parts) != 3 or parts[0] != socket.gethostname()[:200] or not parts[1].isdigit():
        return False
    return _started(int(parts[1])) != parts[2]


def hold_for(interval: float) -> timedelta:
    """How long a claim outlives the holder's last message, for a host scanning every ``interval`` seconds."""
    return max(MIN_HOLD, timedelta(seconds=INTERVALS_HELD * interval))


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease one stream holds: its number, its holder, how long each message extends it, and whether it
    was taken from another collector (whose stream's last messages this one must not build on)."""

    number: int
    holder: str
    hold: timedelta
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
        return convert.now() + self.hold


def claim(engine: Engine, ref: int, holder: str, hold: timedelta, alone: bool = False) -> Lease:
    """Take host ``ref``'s lease for ``holder``, unless another collector holds it, unlapsed and alive
    (``alone``: no other collector can be, as on SQLite)."""
    now = convert.now()
    with engine.begin() as conn:
        row = conn.execute(LEASE_FOR_UPDATE, {"ref": ref}).one()
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
        conn.execute(TAKE, {"ref": ref, "number": number, "holder": holder, "until": now + hold})
    return Lease(number, holder, hold, taken_over=other)


def holders(conn: Connection) -> dict[str, int]:
    """Each collector applying hosts now (its claims unlapsed), and how many."""
    query = (
        select(hosts.c.lease_holder, func.count())
        .where(hosts.c.lease_holder.is_not(None), hosts.c.lease_until > bindparam("now"))
        .group_by(hosts.c.lease_holder)
        .order_by(hosts.c.lease_holder)
    )
    return {str(holder): int(count) for holder, count in conn.execute(query, {"now": convert.now()})}


def give_back(engine: Engine, ref: int, lease: Lease) -> None:
    """End a stream's claim on its host (unless a newer stream took the host meanwhile)."""
    with engine.begin() as conn:
        conn.execute(GIVE_BACK, {"ref": ref, "number": lease.number})
