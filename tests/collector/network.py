"""Hosts on real network namespaces for the tests: a switch namespace with a bridge, and one namespace
per host wired to it by a veth pair (the machine's own network is left alone)."""

from __future__ import annotations

import subprocess
import sys
import uuid

from tests.collector.harness import ENV
from tests.conftest import ROOT

ADDRESSES = {"host-a": "10.77.0.1", "host-b": "10.77.0.2", "host-c": "10.77.0.3", "outside": "10.77.0.50"}
SWITCH = "10.77.0.254"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Network:
    """The switch namespace with its bridge, and one namespace per host wired to it by a veth pair."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.switch = f"sf-sw-{tag}"
        self.hosts = {name: f"sf-{name}-{tag}" for name in ADDRESSES}
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "addr", "add", f"{SWITCH}/24", "dev", "br0")
        ip("-n", self.switch, "link", "set", "br0", "up")
        ip("-n", self.switch, "link", "set", "lo", "up")
        for index, (name, namespace) in enumerate(self.hosts.items()):
            ip("netns", "add", namespace)
            ip("link", "add", f"sfv{index}{tag}", "type", "veth", "peer", "name", f"sfp{index}{tag}")
            ip("link", "set", f"sfv{index}{tag}", "netns", namespace)
            ip("link", "set", f"sfp{index}{tag}", "netns", self.switch)
            ip("-n", namespace, "link", "set", f"sfv{index}{tag}", "name", "eth0")
            ip("-n", namespace, "addr", "add", f"{ADDRESSES[name]}/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", self.switch, "link", "set", f"sfp{index}{tag}", "master", "br0")
            ip("-n", self.switch, "link", "set", f"sfp{index}{tag}", "up")
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, namespace: str, *command: str, ready: bool = True) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        self.procs.append(proc)
        if ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"{command}: {line}{proc.stderr.read() if proc.stderr else ''}"
        return proc

    def process(self, host: str, name: str, *args: str) -> subprocess.Popen[str]:
        return self.run(self.hosts[host], sys.executable, "-m", "tests.fleet_process", name, *args)

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.terminate()
        proc.wait(timeout=20)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for namespace in [*self.hosts.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
