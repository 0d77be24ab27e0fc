"""A tiny run of the fleet benchmark (one collector restarted under a few agents), so that it keeps working."""

from __future__ import annotations

import os
import re

import pytest

from tests import postgres
from tests.benchmarks import bench_fleet


@pytest.mark.benchmark
@pytest.mark.skipif(
    postgres.binaries() is None and not os.environ.get("SOCKFLEET_TEST_PG_URL"), reason="PostgreSQL is not installed"
)
def test_fleet_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_fleet.main(["--smoke", "--collectors", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ +4 agents every 0.5 s \(= 240 hosts at 30 s\): p50 \d+ ms, p95 \d+ ms: ok$", out, re.M), out
    assert re.search(r"collectors [\d.]+ ms, PostgreSQL [\d.]+ ms, generator [\d.]+ ms", out), out
    assert re.search(
        r"storm: collector 0 restarted .* 4 agents sent full snapshots; half back [\d.]+ s and all back [\d.]+ s", out
    ), out
    assert re.search(r"^  sockets +\d+ B/row", out, re.M), out
    assert re.search(r"^  collectors: [\d.]+ cores busy", out, re.M), out
    if not os.environ.get("SOCKFLEET_TEST_PG_URL"):  # a server elsewhere: its CPU is not measured
        assert re.search(r"^  PostgreSQL: [\d.]+ cores busy", out, re.M), out
