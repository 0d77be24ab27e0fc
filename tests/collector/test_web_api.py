"""``sockfleet web``'s JSON API against the command line on the same database (SQLite and PostgreSQL), its
one-line errors, a database it may only read, and who may ask: loopback, TLS, passwords, a proxy's header."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from sockfleet.collector import convert, db
from sockfleet.collector.store import Store
from sockfleet.collector.times import rfc3339
from tests.collector import fleet
from tests.collector.fleet import at, inet
from tests.collector.harness import ENV, Web, ask, sockfleet
from tests.collector.test_tls import make_certificates
from tests.conftest import ROOT

POLICY = '[[rule]]\nhosts = "web-*"\nforbid = [8080]\n'


def fill(engine: Engine) -> None:
    """Two hosts over five minutes: a connection from app-1 to web-1 that closes, a listener that opens and
    changes owner."""
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    app = store.hello(convert.greeting(fleet.hello("app-1", addresses=("10.0.0.2",))))
    nginx = inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")
    served = inet("tcp", "10.0.0.1", 80, "10.0.0.2", 40000, 3, "nginx")
    client = inet("tcp", "10.0.0.2", 40000, "10.0.0.1", 80, 4, "curl")
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [nginx, served])))
    store.apply(app, convert.scan(fleet.snapshot(1, at(0), [client])))
    java = inet("tcp", "0.0.0.0", 8080, None, 0, 2, "java")
    store.apply(web, convert.scan(fleet.delta(2, at(2), added=[java], removed=[served])))
    store.apply(app, convert.scan(fleet.delta(2, at(2), removed=[client])))
    store.apply(web, convert.scan(fleet.delta(3, at(4), changed=[inet("tcp", "0.0.0.0", 8080, None, 0, 2, "jetty")])))


def migrated(folder: Path) -> str:
    """The URL of an empty sockfleet database in ``folder``."""
    url = f"sqlite:///{folder / 'fleet.db'}"
    engine = db.engine(url)
    db.migrate(engine)
    engine.dispose()
    return url


def stamp(minutes: float) -> str:
    text = rfc3339(at(minutes))
    assert text is not None
    return text


T1, T3, T5 = stamp(1), stamp(3), stamp(5)
CASES: list[tuple[str, dict[str, str], list[str]]] = [
    ("hosts", {}, []),
    ("hosts", {"at": T1}, ["--at", T1]),
    ("sockets", {"host": "web-1"}, ["--host", "web-1"]),
    (
        "sockets",
        {"at": T1, "proto": "tcp", "state": "established"},
        ["--at", T1, "--proto", "tcp", "--state", "established"],
    ),
    ("ports", {"exposed": "1"}, ["--exposed"]),
    ("ports", {"at": T3, "port": "8080"}, ["--at", T3, "--port", "8080"]),
    ("talks", {"at": T1}, ["--at", T1]),
    ("talks", {"since": T1, "until": T5, "process": "curl"}, ["--since", T1, "--until", T5, "--process", "curl"]),
    ("history", {"host": "web-1", "port": "8080"}, ["--host", "web-1", "--port", "8080"]),
    ("diff", {"from": T1, "to": T5}, ["--from", T1, "--to", T5]),
    (
        "diff",
        {"from": T1, "to": T5, "short-lived": "1", "host": "web-1"},
        ["--from", T1, "--to", T5, "--short-lived", "--host", "web-1"],
    ),
    ("audit", {"at": T5}, ["--at", T5]),
    ("audit", {"allow-unobserved": "true"}, ["--allow-unobserved"]),
]


def test_every_endpoint_answers_exactly_the_command_lines_json(engine: Engine, db_url: str, tmp_path: Path) -> None:
    fill(engine)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    with Web("--db", db_url, "--policy", str(policy)) as server:
        for question, params, flags in CASES:
            status, headers, body = server.get(f"/api/v1/{question}?{urllib.parse.urlencode(params)}")
            extra = ["--policy", str(policy)] if question == "audit" else []
            cli = ask(db_url, question, *flags, *extra, "--format", "json", check=False)
            assert status == 200, (question, params, body)
            assert headers["content-type"] == "application/json"
            assert json.loads(body) == json.loads(cli.stdout), (question, params)
            assert headers["x-sockfleet-exit-status"] == str(cli.returncode), (question, params)
        violations = json.loads(server.get(f"/api/v1/audit?at={T5}")[2])
        assert any(f["severity"] == "violation" and f["local_port"] == 8080 for f in violations)


BAD: list[tuple[str, dict[str, str], list[str]]] = [
    ("ports", {"port": "http"}, ["--port", "http"]),
    ("ports", {"prot": "tcp"}, ["--prot=tcp"]),
    ("sockets", {"state": "dancing"}, ["--state", "dancing"]),
    ("talks", {"at": "yesterday"}, ["--at", "yesterday"]),
    ("talks", {"until": T5}, ["--until", T5]),
    ("history", {}, []),
    ("history", {"host": "db-9"}, ["--host", "db-9"]),
    ("diff", {"from": T5, "to": T1}, ["--from", T5, "--to", T1]),
    ("audit", {"lookback": "forever"}, ["--lookback", "forever"]),
]


@pytest.mark.parametrize(("question", "params", "flags"), BAD)
def test_a_bad_parameter_is_400_with_the_command_lines_message(
    tmp_path: Path, question: str, params: dict[str, str], flags: list[str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"

    engine = db.engine(db_url)
    db.migrate(engine)
    fill(engine)
    engine.dispose()
    with Web("--db", db_url) as server:
        status, _, body = server.get(f"/api/v1/{question}?{urllib.parse.urlencode(params)}")
    cli = ask(db_url, question, *flags, check=False)
    assert cli.returncode == 2
    message = json.loads(body)["error"]
    assert status == 400
    said = re.fullmatch(r"sockfleet( \w+)?: error: (.*?)(; see sockfleet \w+ --help)?\n", cli.stderr)
    assert said is not None and said.group(2) == message


def test_what_a_request_may_not_set(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    with Web("--db", db_url) as server:
        assert server.get("/api/v1/ports?db=sqlite:////etc/passwd")[:1] == (400,)
        assert json.loads(server.get("/api/v1/ports?format=csv")[2]) == {
            "error": "format: set by the server, not by a request"
        }
        assert server.get("/api/v1/ports?exposed=maybe")[0] == 400
        assert server.get("/api/v1/tokens")[0] == 404
        status, headers, _ = server.get("/api/v1/ports")
        assert status == 200
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert (
            "script-src 'self'" in headers["content-security-policy"]
            and "unsafe-inline" not in headers["content-security-policy"]
        )
        assert headers["x-content-type-options"] == "nosniff"
        assert server.get("/healthz")[:1] == (200,)


@pytest.mark.root
def test_the_server_reads_a_database_it_cannot_write(tmp_path: Path) -> None:
    """Run as a user who may read the SQLite file but not write it (nor its folder): every question answers."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the server as another user")
    folder = tmp_path / "ro"
    folder.mkdir()
    db_url = f"sqlite:///{folder / 'fleet.db'}"

    engine = db.engine(db_url)
    db.migrate(engine)
    fill(engine)
    engine.dispose()
    os.chmod(folder / "fleet.db", 0o444)
    os.chmod(folder, 0o555)
    for parent in (tmp_path, *tmp_path.parents):
        if parent != Path("/"):
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
    before = (folder / "fleet.db").read_bytes()
    try:
        with Web("--db", db_url, user=65534) as server:
            for question, params, _ in CASES:
                status, _, body = server.get(f"/api/v1/{question}?{urllib.parse.urlencode(params)}")
                assert status == 200, (question, body)
        assert (folder / "fleet.db").read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["fleet.db"]
    finally:
        os.chmod(folder, 0o755)


def test_the_server_answers_with_a_postgresql_role_that_may_only_read(pg_cluster: Any) -> None:
    url = pg_cluster.database()

    engine = db.engine(url)
    db.migrate(engine)
    fill(engine)
    engine.dispose()
    role = f"reader_{make_url(url).database}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    admin.dispose()
    reader = make_url(url).set(username=role, password=None).render_as_string(hide_password=False)
    with Web("--db", reader) as server:
        for question, params, _ in CASES:
            status, _, body = server.get(f"/api/v1/{question}?{urllib.parse.urlencode(params)}")
            assert status == 200, (question, body)


def start_refused(*args: str) -> str:
    result = subprocess.run(
        sockfleet("web", *args), capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_beyond_loopback_the_page_needs_tls_and_a_login(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    _, cert, key = make_certificates(tmp_path)
    assert "needs --tls-cert and --tls-key" in start_refused("--db", db_url, "--listen", "0.0.0.0:0")
    assert "needs --password-file" in start_refused(
        "--db", db_url, "--listen", "[::]:0", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    assert "not a certificate" in start_refused("--db", db_url, "--tls-cert", str(key), "--tls-key", str(key))
    passwords = tmp_path / "users"
    passwords.write_text("")
    os.chmod(passwords, 0o644)
    assert "other users may read it" in start_refused(
        "--db",
        db_url,
        "--listen",
        "0.0.0.0:0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--password-file",
        str(passwords),
    )


def passwd(path: Path, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sockfleet("web", "passwd", "--file", str(path), "--user", user, "--password-stdin"),
        input=password + "\n",
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_password_file_guards_the_page_over_tls(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    _, cert, key = make_certificates(tmp_path)
    users = tmp_path / "users"
    assert passwd(users, "alice", "correct horse").returncode == 0
    assert passwd(users, "bob", "battery staple").returncode == 0
    assert passwd(users, "carol", "short").returncode == 2
    assert os.stat(users).st_mode & 0o777 == 0o600
    lines = users.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]
    assert "correct horse" not in users.read_text()
    assert len({line.split("$")[4] for line in lines}) == 2  # a salt of each user's own
    with Web("--db", db_url, "--tls-cert", str(cert), "--tls-key", str(key), "--password-file", str(users)) as server:
        assert server.base.startswith("https://")
        status, headers, _ = server.get("/api/v1/hosts")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert server.get("/api/v1/hosts", basic("alice", "wrong horse"))[0] == 401
        assert server.get("/api/v1/hosts", basic("mallory", "correct horse"))[0] == 401
        status, headers, body = server.get("/api/v1/hosts", basic("alice", "correct horse"))
        assert (status, body) == (200, "[]\n")
        assert headers["strict-transport-security"].startswith("max-age=")
        assert server.get("/api/v1/hosts", basic("bob", "battery staple"))[0] == 200
        assert server.get("/healthz")[0] == 200  # for the service manager, without a login
    assert passwd(users, "alice", "").returncode == 2
    removed = subprocess.run(
        sockfleet("web", "passwd", "--file", str(users), "--user", "bob", "--delete"),
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert removed.returncode == 0 and [line.split(":")[0] for line in users.read_text().splitlines()] == ["alice"]


def test_a_trusted_proxy_header_must_name_the_user(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    with Web("--db", db_url, "--trusted-header", "X-Forwarded-User") as server:
        assert server.get("/api/v1/hosts")[0] == 401
        assert server.get("/api/v1/hosts", {"X-Forwarded-User": " "})[0] == 401
        assert server.get("/api/v1/hosts", {"X-Forwarded-User": "alice"})[0] == 200


def test_what_must_not_pass_for_a_login(tmp_path: Path) -> None:
    """An empty password file, or a header every browser sends, is no way to know users."""
    db_url = migrated(tmp_path)
    _, cert, key = make_certificates(tmp_path)
    tls = ("--listen", "0.0.0.0:0", "--tls-cert", str(cert), "--tls-key", str(key))
    assert "--password-file is empty" in start_refused("--db", db_url, *tls, "--password-file", "")
    assert "--trusted-header is empty" in start_refused("--db", db_url, *tls, "--trusted-header", " ")
    assert "every browser sends it" in start_refused("--db", db_url, *tls, "--trusted-header", "Authorization")


def test_without_a_login_only_requests_for_this_machine_are_answered(tmp_path: Path) -> None:
    """A page on loopback with no login answers only requests that name localhost: a web page elsewhere
    cannot read it through a name that resolves to 127.0.0.1 (DNS rebinding)."""
    db_url = migrated(tmp_path)
    with Web("--db", db_url) as server:
        port = server.base.rsplit(":", 1)[1]
        assert server.get("/api/v1/hosts", {"Host": "attacker.example"})[0] == 421
        assert server.get("/api/v1/hosts", {"Host": f"attacker.example:{port}"})[0] == 421
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "localhost"):
            assert server.get("/api/v1/hosts", {"Host": host})[0] == 200, host
        assert server.get("/api/v1/hosts?at=--")[0] == 400


def test_a_user_removed_or_added_counts_from_the_next_request(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    users = tmp_path / "users"
    assert passwd(users, "alice", "correct horse").returncode == 0
    with Web("--db", db_url, "--password-file", str(users)) as server:
        assert server.get("/api/v1/hosts", basic("alice", "correct horse"))[0] == 200
        assert passwd(users, "bob", "battery staple").returncode == 0
        assert server.get("/api/v1/hosts", basic("bob", "battery staple"))[0] == 200
        removed = subprocess.run(
            sockfleet("web", "passwd", "--file", str(users), "--user", "alice", "--delete"),
            capture_output=True,
            text=True,
            env=ENV,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert removed.returncode == 0, removed.stderr
        assert server.get("/api/v1/hosts", basic("alice", "correct horse"))[0] == 401


def test_passwd_keeps_every_user_of_changes_made_at_once_and_refuses_odd_names(tmp_path: Path) -> None:
    users = tmp_path / "users"
    runs = [
        subprocess.Popen(
            sockfleet("web", "passwd", "--file", str(users), "--user", f"user{n}", "--password-stdin"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        for n in range(6)
    ]
    for n, run in enumerate(runs):
        run.communicate(f"password number {n}\n", timeout=120)
        assert run.returncode == 0
    assert sorted(line.split(":")[0] for line in users.read_text().splitlines()) == [f"user{n}" for n in range(6)]
    for name in ("a:b", "with space", "esc\x1b[2J", "x" * 65, ""):
        assert passwd(users, name, "long enough password").returncode == 2, name
    no_terminal = subprocess.run(
        sockfleet("web", "passwd", "--file", str(users), "--user", "carol"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert no_terminal.returncode == 2 and "--password-stdin" in no_terminal.stderr
    assert "Traceback" not in no_terminal.stderr
