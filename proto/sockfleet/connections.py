"""The connection rules both sides need, in plain Python: the agent folds connections that closed between
two scans with them, and ``sockfleet.collector.rules`` builds its predicates and SQL from the same constants.

* **v4-mapped**: ``::ffff:10.0.0.5`` is the IPv4 peer ``10.0.0.5`` of an IPv6 socket (``plain``).
* **ephemeral**: a port the kernel hands out to callers, 32768-60999 by default (``ephemeral``).
* **wildcards**: ``0.0.0.0`` and ``::``, on which a listener takes every address (``WILDCARDS``).
* **connected**: an inet socket with a peer in any state but ``GONE`` is one end of a connection.
* **roles** of a connection's end, as flows fold them: ``SERVED`` (a listener of the host holds its port:
  the peer's port is folded away), ``CALLING`` (its own port is ephemeral and the peer's is not: its own
  port is folded away), ``NOT_FOLDED`` (anything else: both ports kept).
"""

from __future__ import annotations

EPHEMERAL = (32768, 60999)
WILDCARDS = ("0.0.0.0", "::")
MAPPED = "::ffff:"
SERVED, CALLING, NOT_FOLDED = "s", "c", "n"
# States of an inet socket with a peer that is not one end of a connection: its process has let go, or it
# listens.
GONE = ("TIME_WAIT", "LISTEN")


def plain(address: str | None) -> str | None:
    """``::ffff:10.0.0.5`` → ``10.0.0.5``; any other address as it is."""
    if address is not None and address.startswith(MAPPED) and "." in address:
        return address[len(MAPPED) :]
    return address


def ephemeral(port: int | None) -> bool:
    return port is not None and EPHEMERAL[0] <= port <= EPHEMERAL[1]
