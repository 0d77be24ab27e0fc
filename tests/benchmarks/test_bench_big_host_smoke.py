"""A tiny run of the large-host benchmark, so that it keeps working."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import bench_big_host


@pytest.mark.benchmark
def test_big_host_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_big_host.main(["--sockets", "25000"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"large host, 25,000 sockets in parts of 20,000: acknowledged after [\d.]+ s", out)
    assert re.search(r"small host meanwhile: \d+ heartbeats, send to ack p50 [\d.]+ ms", out)
    assert re.search(r"in steps / at once: [\d.]+x", out)
