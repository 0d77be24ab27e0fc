"""Interface addresses: the agent reports at most the wire's bound, so that a host with more still reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sockfleet.v1.limits import MAX_ADDRESSES
from tests.collector.harness import ENV
from tests.conftest import ROOT

COUNT = MAX_ADDRESSES + 300


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="a network namespace needs root")
def test_more_addresses_than_the_bound_are_cut(tmp_path: Path) -> None:
    namespace = f"sf-addr-{uuid.uuid4().hex[:6]}"
    batch = tmp_path / "addresses"
    lines = []
    for interface in range(COUNT // 1000 + 1):
        lines.append(f"link add d{interface} type veth peer name p{interface}")  # veth: no dummy driver needed
        lines += [
            f"addr add 10.{interface}.{n // 250}.{n % 250 + 1}/32 dev d{interface}"
            for n in range(min(1000, COUNT - interface * 1000))
        ]
    batch.write_text("\n".join(lines) + "\n")
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "-batch", str(batch)], check=True, capture_output=True)
        program = (
            "from agent.snapshot import Scanner; "
            "print(len(Scanner(scope='current', with_addresses=True).snapshot().addresses))"
        )
        found = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", program],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=ROOT,
            check=True,
            timeout=120,
        )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    assert int(found.stdout) == MAX_ADDRESSES
    assert f"{COUNT} interface addresses: only the first {MAX_ADDRESSES} are reported" in found.stderr
