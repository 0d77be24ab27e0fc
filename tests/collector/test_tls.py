"""TLS on the wire: the agent verifies the collector's certificate against a CA file."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.collector.harness import ENV as E2E_ENV
from tests.collector.harness import Agent, ask, sockfleet
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 and localhost signed by it."""
    openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=sockfleet test CA")
    openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "collector.key", "-out", "collector.csr",
            "-subj", "/CN=localhost")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(folder, "x509", "-req", "-in", "collector.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "collector.pem", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.pem", folder / "collector.pem", folder / "collector.key"


def test_agent_streams_over_tls(tmp_path: Path, db_url: str) -> None:
    ca, cert, key = make_certificates(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(ask(db_url, "collector", "enroll", "--host", "tls-host").stdout)
    collector = subprocess.Popen(
        sockfleet("collector", "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
                  "--db", db_url),
        stderr=subprocess.PIPE, text=True, env=E2E_ENV, cwd=ROOT,
    )
    assert collector.stderr is not None
    line = collector.stderr.readline()
    assert "(TLS, enrolled agents only)" in line, line
    port = int(line.split("127.0.0.1:")[1].split()[0])
    agent = subprocess.Popen(
        sockfleet("agent", "run", "--collector", f"127.0.0.1:{port}", "--ca", str(ca), "--interval", "0.5s",
                  "--namespaces", "current", "--host", "tls-host", "--token-file", str(token_file)),
        stderr=subprocess.DEVNULL, env=E2E_ENV, cwd=ROOT,
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
        collector.terminate()
        collector.wait(timeout=20)
        collector.stderr.close()


def test_serve_refuses_plain_text_unless_asked(db_url: str) -> None:
    result = subprocess.run(sockfleet("collector", "serve", "--listen", "127.0.0.1:0", "--db", db_url),
                            capture_output=True, text=True, env=E2E_ENV, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("sockfleet: error: collector serve needs --tls-cert and --tls-key, "
                                     "or --insecure for plain text")


def client_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A client certificate whose common name is ``name``, signed by the test CA."""
    openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
    openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1")
    return folder / f"{name}.pem", folder / f"{name}.key"


def test_mutual_tls_names_the_host(tmp_path: Path, db_url: str) -> None:
    ca, cert, key = make_certificates(tmp_path)
    mine = client_certificate(tmp_path, "mtls-host")
    other = client_certificate(tmp_path, "someone-else")
    collector = subprocess.Popen(
        sockfleet("collector", "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
                  "--tls-client-ca", str(ca), "--db", db_url),
        stderr=subprocess.PIPE, text=True, env=E2E_ENV, cwd=ROOT,
    )
    assert collector.stderr is not None
    port = int(collector.stderr.readline().split("127.0.0.1:")[1].split()[0])

    def agent(host: str, pair: tuple[Path, Path]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            sockfleet("agent", "run", "--collector", f"127.0.0.1:{port}", "--ca", str(ca), "--interval", "0.5s",
                      "--namespaces", "current", "--host", host, "--tls-cert", str(pair[0]),
                      "--tls-key", str(pair[1])),
            stderr=subprocess.DEVNULL, env=E2E_ENV, cwd=ROOT,
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
        collector.terminate()
        collector.wait(timeout=20)
        collector.stderr.close()
