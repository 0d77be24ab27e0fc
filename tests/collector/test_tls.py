"""TLS on the wire: the agent verifies the collector's certificate against a CA file."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.collector.harness import ENV as E2E_ENV
from tests.collector.harness import Agent, Collector, ask, sockfleet
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)


def make_certificates(folder: Path, names: str = "IP:127.0.0.1,DNS:localhost") -> tuple[Path, Path, Path]:
    """A CA, and a certificate for ``names`` (127.0.0.1 and localhost) signed by it."""
    openssl(
        folder,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=sockfleet test CA",
    )
    openssl(
        folder,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "collector.key",
        "-out",
        "collector.csr",
        "-subj",
        "/CN=localhost",
    )
    (folder / "san.ext").write_text(f"subjectAltName={names}\n")
    openssl(
        folder,
        "x509",
        "-req",
        "-in",
        "collector.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "collector.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    return folder / "ca.pem", folder / "collector.pem", folder / "collector.key"


def test_agent_streams_over_tls(tmp_path: Path, db_url: str) -> None:
    ca, cert, key = make_certificates(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(ask(db_url, "collector", "enroll", "--host", "tls-host").stdout)
    token_file.chmod(0o600)  # the agent refuses a token others may read
    collector = Collector(db_url, 0, "--tls-cert", str(cert), "--tls-key", str(key), secured=True)
    line = collector.lines[0]
    assert "(TLS, enrolled agents only)" in line, line
    port = collector.port
    agent = subprocess.Popen(
        sockfleet(
            "agent",
            "run",
            "--collector",
            f"127.0.0.1:{port}",
            "--ca",
            str(ca),
            "--interval",
            "0.5s",
            "--namespaces",
            "current",
            "--host",
            "tls-host",
            "--token-file",
            str(token_file),
        ),
        stderr=subprocess.DEVNULL,
        env=E2E_ENV,
        cwd=ROOT,
    )
    untrusting = Agent(port, "plain-host")  # speaks plain text to a TLS port: never gets in

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "tls-host" not in ask(db_url, "hosts").stdout:
            time.sleep(0.3)
        hosts = ask(db_url, "hosts").stdout
        assert "tls-host" in hosts
        assert "plain-host" not in hosts
    finally:
        untrusting.stop()
        agent.terminate()
        agent.wait(timeout=20)
        collector.stop()


def test_an_agent_that_does_not_trust_the_collector_says_why(tmp_path: Path) -> None:
    _, cert, key = make_certificates(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = make_certificates(other)
    collector = Collector(
        f"sqlite:///{tmp_path / 'tls.db'}",
        0,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--allow-anonymous",
        secured=True,
    )
    log = tmp_path / "agent.log"
    try:
        with log.open("w") as out:
            agent = subprocess.Popen(
                sockfleet(
                    "agent",
                    "run",
                    "--collector",
                    f"127.0.0.1:{collector.port}",
                    "--ca",
                    str(wrong_ca),
                    "--interval",
                    "0.5s",
                    "--namespaces",
                    "current",
                    "--host",
                    "doubting",
                ),
                stderr=out,
                env=E2E_ENV,
                cwd=ROOT,
            )
            deadline = time.monotonic() + 20
            while "retrying" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            agent.terminate()
            agent.wait(timeout=20)
    finally:
        collector.stop()
    first = log.read_text().splitlines()[0]
    assert (
        f"cannot connect to the collector at 127.0.0.1:{collector.port}: TLS: its certificate is not signed "
        f"by {wrong_ca}"
    ) in first


def test_serve_refuses_plain_text_unless_asked(db_url: str) -> None:
    result = subprocess.run(
        sockfleet("collector", "serve", "--listen", "127.0.0.1:0", "--db", db_url),
        capture_output=True,
        text=True,
        env=E2E_ENV,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sockfleet: error: collector serve needs --tls-cert and --tls-key, or --insecure for plain text"
    )


def client_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A client certificate whose common name is ``name``, signed by the test CA."""
    openssl(
        folder,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
    )
    openssl(
        folder,
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "1",
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


def test_mutual_tls_names_the_host(tmp_path: Path, db_url: str) -> None:
    ca, cert, key = make_certificates(tmp_path)
    mine = client_certificate(tmp_path, "mtls-host")
    other = client_certificate(tmp_path, "someone-else")
    collector = Collector(
        db_url, 0, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca), secured=True
    )
    port = collector.port

    def agent(host: str, pair: tuple[Path, Path]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            sockfleet(
                "agent",
                "run",
                "--collector",
                f"127.0.0.1:{port}",
                "--ca",
                str(ca),
                "--interval",
                "0.5s",
                "--namespaces",
                "current",
                "--host",
                host,
                "--tls-cert",
                str(pair[0]),
                "--tls-key",
                str(pair[1]),
            ),
            stderr=subprocess.DEVNULL,
            env=E2E_ENV,
            cwd=ROOT,
        )

    good, impostor = agent("mtls-host", mine), agent("victim-host", other)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "mtls-host" not in ask(db_url, "hosts").stdout:
            time.sleep(0.3)
        hosts = ask(db_url, "hosts").stdout
        assert "mtls-host" in hosts
        assert "victim-host" not in hosts  # a certificate for someone else may not report for this host
    finally:
        for proc in (good, impostor):
            proc.terminate()
            proc.wait(timeout=20)
        collector.stop()
