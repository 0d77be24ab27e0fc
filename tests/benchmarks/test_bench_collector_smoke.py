"""A tiny run of the fleet load benchmark on both backends, so that it keeps working."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import bench_collector


@pytest.mark.benchmark
def test_collector_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bench_collector.main(
            ["--agents", "3", "--rounds", "2", "--sockets", "100", "--snapshot-sockets", "20", "--paced", "30"]
        )
        == 0
    )
    out = capsys.readouterr().out
    for backend in ("sqlite", "postgresql"):
        assert f"{backend}: 3 agents" in out
    assert len(re.findall(r"deltas \(1 added, 1 removed\):\s+[\d.]+/s   collector", out)) == 2
    assert len(re.findall(r"deltas \(1 added, 1 removed\):\s+[\d.]+/s   floor", out)) == 2
    assert len(re.findall(r"deltas \(1 added, 1 removed\):\s+time\s+[\d.]+x", out)) == 2
    assert len(re.findall(r"socket rows written per unchanged host: 0$", out, re.M)) == 2
