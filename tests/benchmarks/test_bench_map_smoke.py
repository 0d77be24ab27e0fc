"""A tiny run of the map benchmark, so that it keeps working."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.benchmarks import bench_map
from tests.web.conftest import CHROMIUM


@pytest.mark.benchmark
def test_map_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (Debian's chromium package)")
    assert bench_map.main(["--hosts", "4", "--sockets", "30", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^4 hosts, [\d,]+ socket rows, [\d,]+ edges", out, re.M)
    assert re.search(r"map ready\s+\d+ ms", out)
    assert re.search(r"of which drawing\s+\d+ ms\s+\(4 hosts, [1-9][\d,]* edge elements\)", out)
    assert re.search(r"bare SVG, same size\s+\d+ ms\s+-> drawing is [\d.]+x", out)
