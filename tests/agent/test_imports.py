"""A one-shot ``agent snapshot`` imports only what it uses: counted in modules, not milliseconds.

Every module is paid for at each start of the command on every host of the fleet.  The budget is the
number of modules ``python -X importtime`` reports beyond those of a bare ``python -c pass``; raising it
needs a reason, and the modules that must never load on this path are named.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROC = Path(__file__).parent / "fixtures" / "tree" / "proc"
# Modules beyond a bare interpreter's, for each way of printing a snapshot.
BUDGET = {"table": 61, "json": 67, "csv": 61}  # were 98, 103 and 100 before the path was trimmed
# Never on the snapshot path: the wire and its transport, the portable source, the collector's SQL.
FORBIDDEN = ("grpc", "google", "psutil", "sqlalchemy", "alembic", "prometheus_client", "sockfleet.collector", "asyncio")


def imported(*args: str) -> list[str]:
    """The modules that ``python -X importtime ARGS`` loads, in order."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, cwd=ROOT, check=True, timeout=120
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return [line.rpartition("|")[2].strip() for line in lines[1:]]  # the first line is the header


@pytest.mark.parametrize("fmt", sorted(BUDGET))
def test_snapshot_imports_within_budget(fmt: str) -> None:
    bare = set(imported("-c", "pass"))
    args = ("--proc-root", str(PROC), "--source", "procfs", "--namespaces", "current", "--format", fmt)
    modules = imported("-m", "sockfleet", "agent", "snapshot", *args)
    extra = [name for name in modules if name not in bare]
    assert not [name for name in extra if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN)]
    assert len(extra) <= BUDGET[fmt], f"{len(extra)} modules beyond a bare interpreter: {', '.join(extra)}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="netlink is Linux's")
def test_default_source_on_linux_imports_no_portable_source() -> None:
    """The real scan of this host (netlink) loads no more than the fixture's."""
    bare = set(imported("-c", "pass"))
    modules = imported("-m", "sockfleet", "agent", "snapshot", "--namespaces", "current", "--format", "json")
    extra = [name for name in modules if name not in bare]
    assert not [name for name in extra if name.startswith(FORBIDDEN)]
    assert len(extra) <= BUDGET["json"]
