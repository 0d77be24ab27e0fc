"""Memory a running agent hands back to the system after each scan.

glibc's malloc keeps what a program frees for its next allocations and gives back only the top of its
heap, past a threshold; what a scan frees (netlink answers, the previous scan's entries, the messages
of a delta) lies between blocks still in use, so it would stay resident until the next scan: about
3 MB at 2,000 sockets.  ``malloc_trim(0)`` after each scan returns those free pages (some 0.1 ms at
that size); the next scan takes them back from the kernel as it needs them.  Other C libraries and
systems have no such call, and there the agent does without.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sockfleet.agent.events import Closings
from sockfleet.agent.records import Snapshot
from sockfleet.agent.stream import Observer


def trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, other systems)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # the running agent only; a one-shot snapshot has nothing to hand back

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Releasing(Observer):
    """Hands back what each scan freed (``release``), then tells ``inner`` (the metrics, when served)."""

    def __init__(self, inner: Observer, release: Callable[[], object]) -> None:
        self.inner = inner
        self.release = release

    def scanned(self, snap: Snapshot, closed: Closings | None, seconds: float) -> None:
        self.inner.scanned(snap, closed, seconds)
        self.release()

    def scan_failed(self) -> None:
        self.inner.scan_failed()
        self.release()

    def connecting(self) -> None:
        self.inner.connecting()

    def disconnected(self) -> None:
        self.inner.disconnected()

    def sent(self, kind: str) -> None:
        self.inner.sent(kind)

    def acked(self) -> None:
        self.inner.acked()

    def dropped(self) -> None:
        self.inner.dropped()
