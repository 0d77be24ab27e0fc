"""``--log-format text|json`` and ``--log-level``: what a line holds, and that no secret (an agent's token, the
database's password) ever reaches a log, even at debug level."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from sockfleet import logs
from tests import postgres
from tests.collector.harness import ENV, ask, sockfleet, wait_for
from tests.conftest import ROOT

PASSWORD = "pw-Zq81vXk2-never-logged"


@contextmanager
def captured(level: str, fmt: str) -> Iterator[io.StringIO]:
    """What ``logs.setup`` writes, to a string; the root logger restored afterwards."""
    root = logging.getLogger()
    before = root.level
    stream = io.StringIO()
    handler = logs.setup(level, fmt, stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)  # type: ignore[arg-type]
        root.setLevel(before)


def test_json_lines_hold_time_level_logger_message_and_extra_fields() -> None:
    with captured("debug", "json") as stream:
        log = logging.getLogger("sockfleet.collector")
        log.info("host %s connected", "web-1", extra={"host": "web-1", "address": "ipv4:10.0.0.5:4", "n": 3})
        log.debug("a path", extra={"where": Path("/tmp")})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("time"))
    assert first == {
        "level": "info",
        "logger": "sockfleet.collector",
        "message": "host web-1 connected",
        "host": "web-1",
        "address": "ipv4:10.0.0.5:4",
        "n": 3,
    }
    assert (second["level"], second["where"]) == ("debug", "/tmp")
    assert third["level"] == "error" and "ValueError: boom" in third["traceback"]


def test_text_lines_and_levels() -> None:
    with captured("warning", "text") as stream:
        logging.getLogger("sockfleet.agent").info("not shown")
        logging.getLogger("sockfleet.agent").warning("shown %d", 1, extra={"reason": "x"})
    [line] = stream.getvalue().splitlines()
    assert line.endswith(" sockfleet.agent: shown 1")
    with pytest.raises(ValueError, match="log-format"):
        logs.setup("info", "xml")


def test_setup_leaves_a_configured_root_alone() -> None:
    """Under pytest, as in a program that embeds sockfleet, the root logger has handlers already."""
    assert logging.getLogger().handlers
    assert logs.setup("debug", "json") is None
    assert logs.rfc3339(0.5) == "1970-01-01T00:00:00.500Z"


def _started(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as file:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=file, env=ENV, cwd=ROOT)


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a JSON log but the collector's own first and last lines, which are not log records."""
    return [json.loads(line) for line in text.splitlines() if line and not line.startswith("sockfleet collector:")]


@pytest.mark.skipif(bool(os.environ.get("SOCKFLEET_TEST_PG_URL")), reason="sets a password in a server's URL")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_a_log(tmp_path: Path, fmt: str) -> None:
    with postgres.cluster() as cluster:  # trust authentication: any password is taken, and must never show
        db_url = make_url(cluster.database()).set(password=PASSWORD).render_as_string(hide_password=False)
        token = ask(db_url, "collector", "enroll", "--host", "secret-host").stdout.strip()
        token_file = tmp_path / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        wrong = "wrong-token-Yb5q0c7p-never-logged"
        debug = ("--log-level", "debug", "--log-format", fmt)
        said = {name: tmp_path / f"{name}.log" for name in ("collector", "agent", "stranger")}
        serve = sockfleet("collector", "serve", "--insecure", "--listen", "127.0.0.1:0", "--db", db_url, *debug)
        collector = _started(serve, said["collector"])
        procs = [collector]
        try:
            wait_for(lambda: "listening on 127.0.0.1:" in said["collector"].read_text(), "the collector")
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", said["collector"].read_text())
            assert match is not None
            run: tuple[str, ...] = ("agent", "run", "--collector", f"127.0.0.1:{match.group(1)}", "--insecure")
            run += ("--interval", "0.5s", "--namespaces", "current", *debug)
            procs.append(
                _started(sockfleet(*run, "--host", "secret-host", "--token-file", str(token_file)), said["agent"])
            )
            stranger = sockfleet(*run, "--host", "stranger")
            with said["stranger"].open("ab") as file:  # a token that is not enrolled: refused, and not logged
                procs.append(
                    subprocess.Popen(
                        stranger,
                        stderr=file,
                        env={**ENV, "SOCKFLEET_TOKEN": wrong},
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                    )
                )
            wait_for(lambda: "secret-host" in ask(db_url, "hosts").stdout, "the enrolled agent's first scan")
            wait_for(lambda: "unknown or revoked agent token" in said["collector"].read_text(), "the refusal")
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        texts = {name: path.read_text() for name, path in said.items()}
    for name, text in texts.items():
        for secret in (PASSWORD, token, wrong):
            assert secret not in text, f"{secret!r} in the {name}'s log"
    assert "***" in texts["collector"]  # the database URL, shown without its password
    if fmt == "json":
        records = _json_lines(texts["collector"])
        [connected] = [r for r in records if "connected from" in r["message"]]
        assert connected["host"] == "secret-host" and connected["agent_version"]
        assert connected["address"].startswith("ipv4:127.0.0.1:")
        [refused] = [r for r in records if "unknown or revoked" in r["message"]][:1]
        assert refused["reason"] == "unauthenticated" and refused["level"] == "warning"
        [left] = [r for r in records if "secret-host" in r["message"] and "disconnected" in r["message"]]
        assert left["reason"] and left["agent_version"] == connected["agent_version"]
        agent = _json_lines(texts["agent"])
        assert any(r["message"].startswith("connecting to the collector") and r["host"] == "secret-host" for r in agent)
        stopping = [r for r in agent if r.get("reason") == "stopping"]
        assert stopping and stopping[0]["address"] == f"127.0.0.1:{match.group(1)}"
    else:
        assert re.search(r"host secret-host \(secret-host\) connected from ipv4:127\.0\.0\.1:\d+", texts["collector"])
