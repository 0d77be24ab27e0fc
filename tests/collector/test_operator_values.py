"""Values an operator may get wrong in ways a type check does not catch: a database URL with its password in the
query, an age without a unit for a prune, an option given `--` as its value, numbers out of range."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from sockfleet.collector import db
from tests.conftest import run_sockfleet


def test_a_password_is_never_shown_wherever_the_url_holds_it() -> None:
    assert db.shown(make_url("postgresql+psycopg://sf:hunter2@db/sf")) == "postgresql+psycopg://sf:***@db/sf"
    shown = db.shown(make_url("postgresql+psycopg://sf@db/sf?password=hunter2&sslmode=require"))
    assert "hunter2" not in shown and "password=***" in shown and "sslmode=require" in shown
    result = run_sockfleet("ports", "--db", "postgresql://sf@127.0.0.1:1/sf?password=hunter2", check=False)
    assert result.returncode == 2 and "hunter2" not in result.stderr and "password=***" in result.stderr
    for url in ("postgresql://sf:hunter2@h:abc/x", "postgresql://sf:hunter2@[::1"):
        result = run_sockfleet("ports", "--db", url, check=False)
        assert (result.returncode, result.stderr) == (
            2,
            "sockfleet: error: --db: not a database URL (sqlite:///PATH or postgresql://USER@HOST/DATABASE)\n",
        )
    result = run_sockfleet("ports", "--db", "", check=False)
    assert result.returncode == 2 and "--db is empty" in result.stderr


def test_a_prune_names_its_unit(tmp_path: Path) -> None:
    """A bare number would be seconds: history younger than a minute gone, and the horizon never moves back."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    db.migrate(db.engine(url))
    for age in ("30", "30.5"):
        result = run_sockfleet("collector", "prune", "--older-than", age, "--db", url, check=False)
        assert result.returncode == 2 and "give the age with its unit" in result.stderr
    result = run_sockfleet("collector", "serve", "--insecure", "--retain", "30", "--db", url, check=False)
    assert result.returncode == 2 and "give the age with its unit" in result.stderr


@pytest.mark.parametrize("argv", [["ports", "--at=--"], ["ports", "--host=--"], ["audit", "--new-within=--"]])
def test_an_option_given_a_double_dash_is_one_line(argv: list[str]) -> None:
    result = run_sockfleet(*argv, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "expected one value" in result.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--listen", "127.0.0.1:99999"], "not HOST:PORT"),
        (["--listen", "nonsense"], "not HOST:PORT"),
        (["--max-message-mb", "inf"], "at most 2047"),
        (["--max-message-mb", "5000"], "at most 2047"),
        (["--rate-limit", "nan"], "--rate-limit nan"),
    ],
)
def test_serve_refuses_numbers_out_of_range(tmp_path: Path, argv: list[str], said: str) -> None:
    result = run_sockfleet(
        "collector", "serve", "--insecure", "--db", f"sqlite:///{tmp_path / 'f.db'}", *argv, check=False
    )
    assert result.returncode == 2 and said in result.stderr and result.stderr.count("\n") == 1
