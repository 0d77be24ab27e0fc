"""What an installed sockfleet is: one top-level package, ``sockfleet``, whose agent and collector never load
each other."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def modules(package: str) -> list[str]:
    """Every module of a sockfleet package, by walking its installed folder."""
    probe = subprocess.run(
        [sys.executable, "-c", f"import {package}, json; print(json.dumps(list({package}.__path__)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    found = [package]
    for info in pkgutil.walk_packages(json.loads(probe.stdout), prefix=f"{package}."):
        if ".versions." not in info.name and not info.name.endswith("__main__"):
            found.append(info.name)
    return found


def loaded_after_importing(names: list[str]) -> set[str]:
    program = (
        f"import importlib, json, sys; [importlib.import_module(n) for n in {names!r}]; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd="/")
    return set(json.loads(done.stdout))


def test_the_agent_never_loads_the_collector_nor_sql() -> None:
    loaded = loaded_after_importing(modules("sockfleet.agent"))
    assert not {name for name in loaded if name.startswith(("sockfleet.collector", "sqlalchemy", "psycopg", "alembic"))}


def test_the_collector_never_loads_the_agent() -> None:
    loaded = loaded_after_importing(modules("sockfleet.collector"))
    assert not {name for name in loaded if name.startswith("sockfleet.agent")}


def test_a_snapshot_loads_neither_grpc_nor_sql() -> None:
    program = (
        "import json, sys; from sockfleet.agent.main import main; main(['agent', 'snapshot', '--namespaces', "
        "'current', '--format', 'json']); print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd="/")
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert not {name for name in loaded if name.split(".")[0] in ("grpc", "sqlalchemy", "psycopg", "alembic")}
    assert "sockfleet.collector" not in loaded


@pytest.mark.timeout(300)
def test_an_installed_sockfleet_is_one_package(tmp_path: Path) -> None:
    """``pip install .``: only ``sockfleet`` at the top, the old names gone, and the demo works."""
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    assert sorted(p.name for p in site.iterdir() if p.name not in ("bin",) and not p.name.endswith(".dist-info")) == [
        "sockfleet"
    ]
    static = site / "sockfleet" / "collector" / "web" / "static"
    assert {"map.html", "map.js", "graph.js", "sockfleet.css"} <= {p.name for p in static.iterdir()}  # the page ships
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_DATA_HOME": str(tmp_path / "data")}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for old in ("agent", "collector", "migrations"):
        found = subprocess.run(
            [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = [{str(site)!r}]; import {old}"],
            capture_output=True,
            text=True,
            cwd=outside,
            check=False,
        )
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, old
    demo = subprocess.run(
        [sys.executable, "-m", "sockfleet", "demo", "--once", "--interval", "0.5s"],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=120,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    assert "first scans stored" in demo.stderr
    assert (
        str(site)
        in subprocess.run(
            [sys.executable, "-c", "import sockfleet; print(sockfleet.__file__)"],
            capture_output=True,
            text=True,
            cwd=outside,
            env=env,
            check=True,
        ).stdout
    )
