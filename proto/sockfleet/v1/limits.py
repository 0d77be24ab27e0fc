"""Bounds of the wire messages, in one place that the agent and the collector both read.

The agent keeps every field within its bound: a longer string is shortened with a marker that says how
much was cut (``shorten``), a longer list is cut.  The collector refuses, with ``INVALID_ARGUMENT`` naming
the field, a message that still breaks a bound, so a message stored is always one the database can hold.

    string fields                             bound (characters)
    host_id, host_name, process, user,        MAX_NAME   255
      coverage source, unscanned netns
    cmdline, path, errors and reasons         MAX_TEXT   4,096
    agent_version, boot_id, interface         MAX_SHORT  64
    address                                   MAX_ADDRESS 45 (the longest IPv6 text)

Numbers: ports 0-65535; pids and owner counts up to ``MAX_PID`` (the kernel's ``PID_MAX_LIMIT``);
inodes, namespaces, epochs and sequence numbers below 2**63 (the database's BIGINT).  No string holds a
NUL character (PostgreSQL's text cannot).
"""

from __future__ import annotations

MAX_NAME = 255
MAX_TEXT = 4096
MAX_SHORT = 64
MAX_ADDRESS = 45
MAX_PID = 4_194_304
MAX_BIGINT = 2**63 - 1

# Repeated fields.
MAX_ADDRESSES = 65_536  # interface addresses of one host
MAX_SOURCES = 65_536  # source statuses in one coverage (sources x namespaces)
MAX_NAMESPACES = 65_536  # namespaces scanned, and not scanned, in one coverage
MAX_PIDS = 65_536  # unreadable processes listed in one coverage
MAX_GAPS = 1_024  # gaps in one coverage
MAX_CLOSED_FLOWS = 100_000  # flows of connections closed between scans, in one message

# A snapshot of more sockets than this travels in parts (Snapshot.more).
PART_SOCKETS = 20_000


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending with a marker that says how many were cut.

    ``shorten("x" * 5000, 4096)`` → 4,083 x's then ``"…[+917 chars]"``, 4,096 characters in all.
    """
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    while True:
        marker = f"…[+{cut:,} chars]"
        keep = max(0, limit - len(marker))
        if len(text) - keep == cut or keep == 0:
            return (text[:keep] + marker)[:limit]
        cut = len(text) - keep


def clean(text: str, limit: int) -> str:
    """``text`` fit for the wire: NUL characters written as ``\\x00``, then shortened to ``limit``."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return shorten(text, limit)
