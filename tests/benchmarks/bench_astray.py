"""Benchmark: what one agent whose deltas go astray costs the other hosts of its groups of deltas.

    python -m tests.benchmarks.bench_astray --hosts 32 --rounds 60 --runs 3

Group commit (``collector/store/group.py``) applies the deltas of several hosts in one transaction.  A delta
that closes a socket the collector does not hold (an agent's defect, or a host whose agent cannot see all
of its sockets) is found only by writing, and rolls its group back.  Each round here applies one delta of
every host as one group, in-process on a fresh database (SQLite, and PostgreSQL on a throwaway server with
its tables analyzed, as a serving collector keeps them):

* ``clean``: every delta is applied;
* ``astray``: the same deltas, but the first host's every delta also removes a socket the collector never
  held, so that it is answered with a resync, and its agent sends a snapshot before its next delta (both
  counted in the round's time), the peer in the same run.

It prints the other hosts' applied deltas per second for each, and ``astray`` as a share of ``clean``: what
that one agent costs everyone else's throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator

from sockfleet.collector import convert, db
from sockfleet.collector.store import Store
from sockfleet.collector.store.group import Message, apply_group
from tests import postgres
from tests.collector import fleet


def rate(url: str, hosts: int, rounds: int, astray: bool) -> float:
    """The other hosts' deltas applied per second over ``rounds`` groups on an empty database at ``url``."""
    engine = db.engine(url, ping=False, init=True)
    try:
        db.migrate(engine)
        store = Store(engine)
        churning = [fleet.Churning(index, random.Random(index)) for index in range(hosts)]
        refs = [store.hello(convert.greeting(fleet.hello(f"web-{index}"))) for index in range(hosts)]
        for ref, host in zip(refs, churning, strict=True):
            assert store.apply(ref, convert.scan(host.snapshot(0))).acked
        if store.postgres:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        stranger = fleet.inet("tcp", "10.0.0.1", 45000, "10.9.9.9", 5432, 99, "ghost")
        applied = 0
        started = time.perf_counter()
        for round_ in range(rounds):
            minute = 1 + round_ / 100
            deltas = [host.delta(minute) for host in churning]
            if astray:
                deltas[0].removed.append(stranger.key)
            results = apply_group(store, [Message(ref, delta) for ref, delta in zip(refs, deltas, strict=True)])
            applied += sum(1 for result in results[1:] if getattr(result, "acked", False))
            if astray:  # its agent answers the resync with a snapshot
                first = churning[0]
                first.seq += 1
                snapshot = fleet.snapshot(first.seq, fleet.at(minute + 0.001), list(first.live.values()))
                assert store.apply(refs[0], convert.scan(snapshot)).acked
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    if applied != (hosts - 1) * rounds:
        raise SystemExit(f"only {applied} of {(hosts - 1) * rounds} deltas were applied")
    return applied / elapsed


@contextlib.contextmanager
def databases(backend: str) -> Iterator[Iterator[str]]:
    """Fresh empty databases of ``backend``, one for each run."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield (f"sqlite:///{folder}/run-{number}.db" for number in range(1_000_000))
    else:
        with postgres.cluster() as running:
            yield (running.database() for _ in range(1_000_000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=32, help="hosts in each group")
    parser.add_argument("--rounds", type=int, default=60, help="groups applied in each run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind, alternating")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    for backend in args.backends.split(","):
        print(f"{backend}: {args.hosts} hosts in each group, {args.rounds} groups a run", flush=True)
        with databases(backend) as urls:
            for _ in range(args.runs):
                clean = rate(next(urls), args.hosts, args.rounds, astray=False)
                astray = rate(next(urls), args.hosts, args.rounds, astray=True)
                print(f"  clean {clean:,.0f}/s   astray {astray:,.0f}/s   share {astray / clean:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
