"""The collectors an agent may stream to (``--collector a:50051,b:50051``), in the order it tries them.

Several collectors share one PostgreSQL database; any of them takes any host.  The agent tries them in a
shuffled order (so that a fleet spreads over them), moves to the next one whenever a stream fails or
cannot start, and shuffles again (reading DNS again) after a round in which none answered.  A name that
resolves to several addresses counts as one collector per address; the agent still checks the collector's
certificate against the name.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from sockfleet.agent.errors import UsageError
from sockfleet.commandline import printable


@dataclass(frozen=True, slots=True)
class Target:
    """One collector address: what gRPC connects to, and the name its certificate must hold."""

    address: str  # HOST:PORT, an address literal when the name resolved to several
    name: str  # the HOST:PORT given on the command line
    port: int

    @property
    def label(self) -> str:
        """How logs name it: as given, with the address when the name was resolved here."""
        return self.name if self.address == self.name else f"{self.name} ({self.address})"

    @property
    def host(self) -> str:
        return self.name.rpartition(":")[0].strip("[]")


def parse(text: str) -> list[Target]:
    """``--collector``: one or more comma-separated HOST:PORT; a mistake is one line naming the entry."""
    targets = []
    for entry in (e.strip() for e in text.split(",")):
        host, _, port = entry.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not bare or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
            raise UsageError(f"--collector: {printable(entry)!r} is not HOST:PORT (several: a:50051,b:50051)")
        if ":" in bare and bare == host:
            raise UsageError(f"--collector: {printable(entry)!r}: an IPv6 address goes in brackets, like [::1]:50051")
        if any(c.isspace() or c in "[]/@" for c in bare):
            raise UsageError(f"--collector: {printable(entry)!r}: not a host name or address")
        targets.append(Target(entry, entry, int(port)))
    if len({t.name for t in targets}) != len(targets):
        raise UsageError("--collector: a collector is named twice")
    return targets


def expand(targets: list[Target], shuffle: bool = True) -> list[Target]:
    """Every address to try, in the order to try them: names resolved now (one target per address, when a name
    has several), then shuffled.  A name that does not resolve stays as it is (gRPC says why it fails)."""
    found: list[Target] = []
    for target in targets:
        found.extend(_addresses(target))
    if shuffle:
        random.shuffle(found)
    return found


def _addresses(target: Target) -> list[Target]:
    host = target.host
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return [target]  # an address already
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [target]
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if len(addresses) < 2:
        return [target]
    return [
        Target(f"[{a}]:{target.port}" if ":" in a else f"{a}:{target.port}", target.name, target.port)
        for a in addresses
    ]


class Rotation:
    """Which collector to try now.  ``failed`` moves on to the next and tells whether every collector has
    failed since the last stream that worked (``answered``); after the last, ``resolve`` (which may wait for
    DNS: call it off the event loop) reads the names again and shuffles, the collector that failed last put
    last (a collector that froze keeps accepting connections, and would hold the agent for its pings again)."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.order = list(targets)  # names as given, until resolved
        random.shuffle(self.order)
        self.place = 0
        self.misses = 0
        self.stale = True  # the names are to be resolved before the next try
        self.last_failed: Target | None = None

    @property
    def current(self) -> Target:
        return self.order[self.place]

    def resolve(self) -> None:
        if self.stale:
            order = expand(self.targets)
            if self.last_failed in order and len(order) > 1:
                order.remove(self.last_failed)
                order.append(self.last_failed)
            self.order, self.place, self.stale = order, 0, False

    def answered(self) -> None:
        self.misses = 0

    def failed(self) -> bool:
        self.last_failed = self.current
        self.misses += 1
        self.place += 1
        if self.place >= len(self.order):
            self.place, self.stale = 0, True
        return self.misses >= len(self.order)
