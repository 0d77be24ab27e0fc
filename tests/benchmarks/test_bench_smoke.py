"""A tiny run of each benchmark, so that they keep working; the figures themselves are not checked."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.benchmarks import bench_snapshot


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_snapshot_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--connections", "20", "--repeat", "1", "--run-at", "20", "--interval", "0.2", "--run-intervals", "1"]
    assert bench_snapshot.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("connections=20\n")
    names = ("sockfleet cold", "cold --format json", "cold --format csv", "sockfleet warm", "ss -tuanxp", "psutil")
    for name in names:
        assert re.search(rf"^  {re.escape(name)}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", out, re.M), name
    assert re.search(r"^  ss -tuanxp .* 1\.00x$", out, re.M)
    running = r"^  agent run every 0\.2s: [\d.]+ MB resident \([\d.]+ MB peak\), [\d.]+ ms CPU per interval, [\d.]+% of a core$"
    assert re.search(running, out, re.M)
