"""Socket sources: one module each, exposing ``NAME``, ``DESCRIPTION`` and ``collect``.

``SOURCES`` lists them in order of preference; the ``--source`` flag and the
README's table of sources are made from it.  ``auto`` tries them in order
for each namespace and keeps the first that works; a source that fails is
recorded in the snapshot's coverage, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sockfleet.agent.records import Namespace, Proto, SocketRecord
from sockfleet.agent.sources import netlink, procfs, psutil


class Source(Protocol):
    NAME: str
    DESCRIPTION: str

    def collect(self, ns: Namespace, protos: frozenset[Proto], proc_root: str = "/proc") -> Sequence[SocketRecord]:
        """The sockets of ``ns``: the built-in sources give an ``agent.table.SocketTable`` of compact rows."""
        ...


SOURCES: tuple[Source, ...] = (netlink, procfs, psutil)


def by_name(name: str) -> Source:
    for source in SOURCES:
        if name == source.NAME:
            return source
    raise KeyError(name)
