"""Per-host agent tokens: enroll, present, bind to the host, revoke."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import create_engine, text

from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.collector import fleet
from tests.collector.harness import ENV, Collector, ask, ports, sockfleet, wait_for
from tests.conftest import ROOT


@pytest.fixture
def secured(db_url: str):  # type: ignore[no-untyped-def]
    collector = Collector(db_url, 0, "--insecure", secured=True)
    assert "enrolled agents only" in collector.lines[0], collector.lines[0]
    yield collector.port
    collector.stop()


def send(port: int, token: str | None, host: str) -> list[pb.CollectorMessage]:
    now = datetime.now(UTC).replace(tzinfo=None)
    messages = [
        pb.AgentMessage(hello=fleet.hello(host)),
        pb.AgentMessage(snapshot=fleet.snapshot(1, now, [fleet.tcp_listener(80)])),
    ]
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
        return list(stub.Stream(iter(messages), metadata=metadata, timeout=20))


def status(port: int, token: str | None, host: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        send(port, token, host)
    return caught.value.code()


def test_tokens_bind_agents_to_their_host(secured: int, db_url: str) -> None:
    token = ask(db_url, "collector", "enroll", "--host", "id-web-1").stdout.strip()  # the hello's host_id
    assert len(token) >= 40
    assert status(secured, None, "web-1") == grpc.StatusCode.UNAUTHENTICATED
    assert status(secured, "not-a-token", "web-1") == grpc.StatusCode.UNAUTHENTICATED
    assert status(secured, token, "db-1") == grpc.StatusCode.PERMISSION_DENIED
    assert [m.WhichOneof("body") for m in send(secured, token, "web-1")] == ["ack"]
    assert [r["host"] for r in ports(db_url, "--host", "web-1")] == ["web-1"]
    assert ports(db_url, "--port", "80") and "db-1" not in ask(db_url, "hosts").stdout

    engine = create_engine(db_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM credentials")).scalars().all()
    engine.dispose()
    assert token not in stored  # only the hash is kept

    ask(db_url, "collector", "revoke", "--host", "id-web-1")
    assert status(secured, token, "web-1") == grpc.StatusCode.UNAUTHENTICATED
    again = ask(db_url, "collector", "revoke", "--host", "id-web-1", check=False)
    assert again.returncode == 2
    assert "no active token" in again.stderr


def test_enrolled_agent_streams(secured: int, db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.collector.harness import Agent

    token_file = tmp_path / "token"
    token_file.write_text(ask(db_url, "collector", "enroll", "--host", "enrolled").stdout)
    token_file.chmod(0o600)  # the agent refuses a token others may read
    agent = subprocess.Popen(
        sockfleet(
            "agent",
            "run",
            "--collector",
            f"127.0.0.1:{secured}",
            "--insecure",
            "--interval",
            "0.5s",
            "--namespaces",
            "current",
            "--host",
            "enrolled",
            "--token-file",
            str(token_file),
        ),
        stderr=subprocess.DEVNULL,
        env=ENV,
        cwd=ROOT,
    )
    stranger = Agent(secured, "stranger")  # no token: never gets in
    try:
        wait_for(lambda: "enrolled" in ask(db_url, "hosts").stdout, "the enrolled agent")
        assert "stranger" not in ask(db_url, "hosts").stdout
    finally:
        stranger.stop()
        agent.terminate()
        agent.wait(timeout=20)
