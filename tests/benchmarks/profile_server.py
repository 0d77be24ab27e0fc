"""Run a module under cProfile in every thread, counting CPU time (not wall time), for the benchmarks.

    python -m tests.benchmarks.profile_server OUT.prof MODULE [ARGS...]

Each thread gets a profiler of its own that counts its own CPU time (``time.thread_time``), so a thread
waiting for the GIL or the database is not charged; at exit the profiles are merged into ``OUT.prof``
(read it with ``pstats``).  ``bench_collector`` runs the collector this way when
``SOCKFLEET_BENCH_PROFILE=OUT.prof`` is set.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
import time
from typing import Any

profiles: list[cProfile.Profile] = []


def _start_profile(*_: Any) -> None:
    """The first event of a new thread: give it a profiler (which takes over the thread's profile hook)."""
    profile = cProfile.Profile(time.thread_time)
    profiles.append(profile)
    profile.enable()


def main() -> int:
    out, module, *rest = sys.argv[1:]
    sys.argv = [module, *rest]
    threading.setprofile(_start_profile)
    _start_profile()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        for profile in profiles:
            profile.disable()
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
