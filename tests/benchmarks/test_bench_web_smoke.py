"""A tiny run of the web API benchmark, so that it keeps working."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import bench_web


@pytest.mark.benchmark
def test_web_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_web.main(["--hosts", "3", "--sockets", "30", "--hours", "1", "--requests", "2"]) == 0
    out = capsys.readouterr().out
    for name in bench_web.endpoints(1):
        assert re.search(rf"^  {re.escape(name)}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d,]+$", out, re.M), name
    assert re.search(r"^  ports --at .* 30$", out, re.M)  # 3 hosts x 10 listeners
