"""The open-port audit on SQLite and PostgreSQL: exposed, new, policy rules, exit status."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sockfleet.collector import convert
from sockfleet.collector.audit import audit, load_policy
from sockfleet.collector.errors import UsageError
from sockfleet.collector.store import Store
from tests.collector import fleet
from tests.collector.fleet import at, inet
from tests.collector.harness import ask

POLICY = """
[[rule]]
hosts = "web-*"
allow = [22, 80]
forbid = [23]
[rule.owners]
22 = ["sshd"]
"""


@pytest.fixture
def audited(engine: Engine, tmp_path: Path) -> Path:
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1")))
    db_host = store.hello(convert.greeting(fleet.hello("db-1", addresses=("10.0.0.2",))))
    store.apply(web, convert.scan(fleet.snapshot(1, at(-3000), [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")])))
    store.apply(
        web,
        convert.scan(
            fleet.snapshot(
                2,
                at(-1),
                [
                    inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"),
                    inet("tcp", "0.0.0.0", 22, None, 0, 2, "dropbear"),
                    inet("tcp", "127.0.0.1", 6379, None, 0, 3, "redis"),
                    inet("tcp", "0.0.0.0", 23, None, 0, 4, "telnetd"),
                ],
            )
        ),
    )
    store.apply(
        db_host, convert.scan(fleet.snapshot(1, at(-1), [inet("tcp", "0.0.0.0", 5432, None, 0, 5, "postgres")]))
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return policy


def test_findings(audited: Path, engine: Engine) -> None:
    with engine.connect() as conn:
        findings, unknown = audit(conn, at(0), load_policy(str(audited)), timedelta(hours=24), at(0))
    got = {(f["severity"], f["finding"], f["host"], f["local_port"]) for f in findings}
    assert {g for g in got if g[0] == "violation"} == {
        ("violation", "forbidden port", "web-1", 23),
        ("violation", "port not allowed", "web-1", 23),
        ("violation", "wrong owner", "web-1", 22),
    }
    assert {(g[1], g[2], g[3]) for g in got if g[1] == "exposed"} == {
        ("exposed", "web-1", 80),
        ("exposed", "web-1", 22),
        ("exposed", "web-1", 23),
        ("exposed", "db-1", 5432),
    }
    # nginx has listened for two days; the others appeared a minute ago.
    assert {(g[2], g[3]) for g in got if g[1] == "new"} == {
        ("web-1", 22),
        ("web-1", 6379),
        ("web-1", 23),
        ("db-1", 5432),
    }
    owner = next(f for f in findings if f["finding"] == "wrong owner")
    assert owner["detail"] == "port 22 must belong to sshd, not dropbear"
    assert owner["rule"] == "rule 1 (web-*)"
    assert unknown == []


def test_cli_exit_status(audited: Path, db_url: str, tmp_path: Path) -> None:
    stamp = (at(0)).isoformat() + "Z"
    failing = ask(db_url, "audit", "--policy", str(audited), "--at", stamp, "--format", "json", check=False)
    assert failing.returncode == 1
    assert len([f for f in json.loads(failing.stdout) if f["severity"] == "violation"]) == 3
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('[[rule]]\nhosts = "db-*"\nallow = [5432]\n')
    passing = ask(db_url, "audit", "--policy", str(lenient), "--at", stamp, check=False)
    assert passing.returncode == 0, passing.stdout
    assert passing.stdout.splitlines()[-1].startswith("0 violation(s)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\nallow = [22, 70000]\n", "rule 1.allow must be a list of port numbers (0-65535)"),
        ("[[rule]]\nhost = 'x'\n", "rule 1 has unknown key 'host'"),
        ("[[rule]]\n[rule.owners]\nssh = 'sshd'\n", "rule 1.owners key 'ssh' is not a port"),
        ("rule = 3\n", "'rule' must be an array of tables ([[rule]])"),
        ("[[rule]\n", "not valid TOML"),
    ],
)
def test_bad_policy_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_policy(str(policy))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
