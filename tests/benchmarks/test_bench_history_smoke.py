"""A tiny run of the history benchmark on both backends, so that it keeps working."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import bench_history


@pytest.mark.benchmark
def test_history_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    # Two groups of two hosts: the second group's history is copied from the first's in the database.
    assert bench_history.main(["--hosts", "4", "--sockets", "40", "--hours", "12", "--group", "2"]) == 0
    out = capsys.readouterr().out
    for backend in ("sqlite", "postgresql"):
        assert f"{backend}: 4 hosts x 40 sockets" in out
    assert len(re.findall(r"^  copied to the other 2 hosts in", out, re.M)) == 2
    for question in ("ports --at", "talks --at", "talks --host --at", "history --host", "diff"):
        assert len(re.findall(rf"^  {re.escape(question)}\s+[\d.]+ ms", out, re.M)) == 2, question
    # 4 hosts x 10 listeners at the middle moment; the diff over an hour (a debug listener moved) is not empty
    assert len(re.findall(r"ports --at .*\(40 rows\)", out)) == 2
    assert not re.search(r"diff .*\(0 rows\)", out)
