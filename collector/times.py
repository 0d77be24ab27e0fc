"""Times on the command line: RFC 3339 in UTC, or relative to now (``-15m``, ``-2h``, ``-7d``, ``now``).

Stored and compared as naive UTC datetimes; printed as RFC 3339 with ``Z``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sockfleet.collector.errors import UsageError

EARLIEST = datetime(2000, 1, 1)  # no history is older: scans dated before it are refused
RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def parse_time(text: str, option: str = "--at") -> datetime:
    """``"2026-11-25T10:00:00Z"`` → datetime(2026, 11, 25, 10); ``"-15m"`` → now minus 15 minutes."""
    value = text.strip()
    if value == "now":
        return now()
    match = RELATIVE.match(value)
    if match:
        try:
            moment = now() - timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])
        except OverflowError:
            moment = EARLIEST - timedelta(days=1)
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            raise UsageError(
                f"{option}: {text!r} is not a time (RFC 3339 like 2026-11-25T10:00:00Z, or relative like -15m)"
            ) from None
        if parsed.tzinfo is None:
            raise UsageError(f"{option}: {text!r} has no time zone; add Z for UTC")
        try:
            moment = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            moment = EARLIEST - timedelta(days=1)
    if moment < EARLIEST:
        raise UsageError(f"{option}: {text!r} is before 2000-01-01, where sockfleet's history begins")
    return moment


def parse_duration(text: str, option: str = "--interval") -> float:
    """``"15s"`` → 15.0, ``"2m"`` → 120.0, ``"500ms"`` → 0.5, ``"30"`` → 30.0 seconds."""
    match = DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{option}: {text!r} is not a duration (like 15s, 2m, 500ms)")
    seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if seconds > 100 * 365 * 86400:
        raise UsageError(f"{option}: {text!r} is longer than a century")
    return seconds


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
