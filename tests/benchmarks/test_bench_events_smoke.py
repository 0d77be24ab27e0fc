"""A tiny run of the socket-destroy events benchmark, so that it keeps working; its figures are not checked."""

from __future__ import annotations

import os
import re

import pytest

from tests.benchmarks import bench_events


@pytest.mark.benchmark
@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark runs as root")
def test_events_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_events.main(["--rates", "50", "--seconds", "1", "--interval", "0.5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^rate=50/s seconds=1 interval=0.5s made=\d+", out, re.M)
    for name in ("events", "scans only", "extra"):
        assert re.search(rf"^  {name}\s+cpu\s+-?[\d.]+% of a core", out, re.M), name
    assert re.search(r"^  found\s+served \d+ calling \d+ of \d+ made", out, re.M)
