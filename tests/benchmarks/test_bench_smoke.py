"""A tiny run of each benchmark, so that they keep working; the figures themselves are not checked."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.benchmarks import bench_snapshot


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_snapshot_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_snapshot.main(["--connections", "20", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("connections=20\n")
    for name in ("sockfleet cold", "sockfleet warm", "ss -tuanxp", "psutil"):
        assert re.search(rf"^  {re.escape(name)}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", out, re.M), name
    assert re.search(r"^  ss -tuanxp .* 1\.00x$", out, re.M)
