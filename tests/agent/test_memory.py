"""A running agent hands back what each scan freed, and its observers (the metrics) still hear everything."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
from unittest.mock import Mock

import pytest

from sockfleet.agent.memory import Releasing, trimmer
from sockfleet.agent.snapshot import Scanner
from sockfleet.agent.stream import Identity, Observer, Streamer

HOOKS = sorted(name for name in vars(Observer) if not name.startswith("_"))


def test_every_hook_reaches_the_inner_observer_and_scans_end_with_a_release() -> None:
    calls = Mock()
    inner, release = Mock(spec=Observer), Mock()
    calls.attach_mock(inner, "inner")
    calls.attach_mock(release, "release")
    releasing = Releasing(inner, release)
    assert set(HOOKS) <= set(vars(Releasing)), "a hook of Observer that Releasing would swallow"
    for hook in HOOKS:
        arguments = [object()] * (len(inspect.signature(getattr(Observer, hook)).parameters) - 1)
        getattr(releasing, hook)(*arguments)
    expected: list[str] = []
    for hook in HOOKS:
        expected.append(f"inner.{hook}")
        if hook in ("scanned", "scan_failed"):
            expected.append("release")
    assert [name for name, _, _ in calls.mock_calls] == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trimmer_is_glibcs_malloc_trim() -> None:
    release = trimmer()
    assert release is not None
    assert release() in (0, 1)  # 1: memory was handed back


def test_no_trimmer_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert trimmer() is None


def _closed_port() -> int:
    """A loopback port nothing listens on: the agent's collector is away, and it scans regardless."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans this Linux host")
def test_a_running_agent_releases_after_each_scan() -> None:
    stop = asyncio.Event()
    order: list[str] = []

    class Counting(Observer):
        def scanned(self, *_: object) -> None:
            order.append("scanned")
            if order.count("scanned") == 2:
                stop.set()

    def release() -> None:
        order.append("release")

    ident = Identity(host_id="memory-test", host_name="memory-test", boot_id="")
    streamer = Streamer(f"127.0.0.1:{_closed_port()}", Scanner("memory-test", "current"), ident, 0.01, insecure=True)
    streamer.observer = Releasing(Counting(), release)
    asyncio.run(streamer.run(stop))
    assert order == ["scanned", "release", "scanned", "release"]
