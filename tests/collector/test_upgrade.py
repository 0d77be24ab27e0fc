"""An upgrade keeps all history: the previous release (git tag v0.1.0, schema revision 0013) and this one answer
every question about a database alike, before and after ``collector migrate``, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sockfleet.collector import db
from sockfleet.collector.times import now
from tests.collector.aged import HOUR, AgedFleet, Answers, answers, questions
from tests.conftest import ROOT

RELEASE, REVISION = "v0.1.0", "0013"
RELEASE_COMMIT = "5eec73d7c31ea3401dc292d10fdeca701545a643"  # the tag's commit, for a clone made without tags
# The installed package's folders, as pyproject.toml maps them.
PACKAGE = {"": "proto/sockfleet", "agent": "agent", "collector": "collector", "migrations": "migrations"}


@contextmanager
def release(tag: str) -> Iterator[Path]:
    """A folder to put on PYTHONPATH that imports ``sockfleet`` as the release ``tag`` made it."""
    known = [
        name
        for name in (tag, RELEASE_COMMIT)
        if not subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "-q", "--verify", f"{name}^{{commit}}"],
            capture_output=True,
            check=False,
        ).returncode
    ]
    if not known:
        pytest.skip(f"the release {tag} is not in this checkout's history (a shallow clone)")
    tag = known[0]
    folder = Path(tempfile.mkdtemp(prefix="sockfleet-release-"))
    try:
        archive = folder / "release.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), tag], check=True, timeout=60)
        with tarfile.open(archive) as tar:
            tar.extractall(folder / "tree", filter="data")
        for name, source in PACKAGE.items():
            shutil.copytree(folder / "tree" / source, folder / "site" / "sockfleet" / name)
        yield folder / "site"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def released_answers(site: Path, db_url: str, asked: list[tuple[str, ...]]) -> Answers:
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = subprocess.run(
        [sys.executable, "-c", "import sockfleet.collector.db as d; print(d.head())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=site,
    )
    assert found.stdout.strip() == REVISION  # the release's own code, not this tree's
    return answers(db_url, asked, env=env, cwd=site)


def test_an_upgrade_from_the_previous_release_keeps_every_answer(empty_engine: Engine, db_url: str) -> None:
    db.migrate(empty_engine, REVISION)
    aged = AgedFleet(now().replace(microsecond=0) - 79.5 * HOUR)  # the last scan 2.5 hours ago: hosts are live
    aged.advance_at_release_schema(empty_engine, 78)
    asked = questions([aged.moment(h) for h in (0.5, 20.25, 47, 77.5)], aged.moment(30), aged.moment(70))
    with release(RELEASE) as site:
        before = released_answers(site, db_url, asked)
    db.migrate(empty_engine)
    assert db.current(empty_engine) == db.head()
    after = answers(db_url, asked)
    assert all(code in (0, 3) for code, _, _ in after.values()), after  # audit: 3 when a host is not observed
    for question in asked:
        assert after[question] == before[question], question
    aged.advance(empty_engine, 1)  # and the upgraded database takes the agents' messages as before
