"""A tiny run of the astray-delta benchmark on both backends, so that it keeps working; its figures are not
checked."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import bench_astray


@pytest.mark.benchmark
def test_astray_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_astray.main(["--hosts", "3", "--rounds", "2", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    for backend in ("sqlite", "postgresql"):
        assert f"{backend}: 3 hosts in each group, 2 groups a run" in out
    assert len(re.findall(r"^  clean [\d,]+/s   astray [\d,]+/s   share [\d.]+$", out, re.M)) == 2
