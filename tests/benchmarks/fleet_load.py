"""The pieces of the fleet benchmark: agents that live like real ones, collector processes, CPU by component.

An ``Agent`` is one host: it takes the collectors in a shuffled order, says hello, sends a full snapshot,
then a delta every interval (stop-and-wait: each waits for its Ack).  When its stream ends (the collector
stops, refuses the hello because another collector holds the host, or is unreachable) it waits and tries
the next collector, as the agent does: 1 s with jitter, doubling to 60 s each time every collector has
failed since the last that answered; every new stream starts with a full snapshot.  Its connections call a few services of
other hosts from ephemeral ports, so that they fold into flows as a real host's do.

``Collectors`` runs K ``sockfleet collector serve`` processes on one database and restarts one on its own
port (``tests.benchmarks.usage`` sums the CPU of a local PostgreSQL server's postmaster and every backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.benchmarks.bench_collector import ENV, ROOT, cpu_seconds, make_socket

LISTENERS = 10  # make_socket's first ten sockets listen
PEERS = 8  # other hosts each host calls
SERVICE_PORTS = (5432, 443, 8080)
EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range
ACK_TIMEOUT = 60.0
MAX_BACKOFF = 60.0
Call = grpc.aio.StreamStreamCall[pb.AgentMessage, pb.CollectorMessage]
SERVE = [sys.executable, "-m", "sockfleet", "collector", "serve", "--insecure", "--allow-anonymous"]


class Ended(Exception):
    """A stream that ended, with the gRPC status name its collector gave (or what went wrong)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


FAILURES = (grpc.aio.AioRpcError, Ended, TimeoutError)


def fleet_socket(host: int, n: int) -> pb.Socket:
    """Socket ``n`` of ``host``: a listener for n < 10, else a call from an ephemeral port to a service of one
    of ``PEERS`` other hosts (so that a host's connections fold into a few flows)."""
    sock = make_socket(host, n)
    if n >= LISTENERS:
        low, high = EPHEMERAL
        sock.key.local_port = low + (n * 7919 + host) % (high - low)
        peer = (host + 1 + n % PEERS) % 50_000
        sock.key.remote_address = f"10.{peer >> 8 & 255}.{peer & 255}.1"
        sock.key.remote_port = SERVICE_PORTS[n % len(SERVICE_PORTS)]
    return sock


@dataclass(slots=True)
class Tally:
    """What the agents saw, shared by all of them: each acknowledged message, refusals, resynchronisations."""

    # (sent, latency, kind, agent) per acknowledged message; time.monotonic() seconds
    acks: list[tuple[float, float, str, int]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # stream endings by gRPC status
    resynced: dict[int, float] = field(default_factory=dict)  # agent -> when its last full snapshot was acked
    waiting: dict[int, float] = field(default_factory=dict)  # agent -> when its unacknowledged message was sent

    def count(self) -> int:
        return len(self.acks)


class Agent:
    """One simulated host (see the module's docstring)."""

    def __init__(
        self,
        index: int,
        targets: list[str],
        channels: Channels,
        interval: float,
        sockets: int,
        churn: float,
        announced: float | None = None,
    ) -> None:
        self.index = index
        self.announced = announced or interval  # the interval its hello states
        self.targets = targets
        self.channels = channels
        self.interval = interval
        self.churn = churn * sockets  # mean sockets opened (and as many closed) per scan
        self.live = [fleet_socket(index, n) for n in range(sockets)]
        self.next_inode = sockets
        self.epoch = time.time_ns() // 1000 + index
        self.seq = 0
        self.connected: str | None = None  # the collector whose stream is open, once its snapshot is acked
        self.stop = asyncio.Event()
        self.random = random.Random(index)

    async def run(self, tally: Tally, start_after: float) -> None:
        """Streams until stopped, moving through the collectors as ``agent.stream`` and ``agent.targets`` do."""
        await _sleep_or_stop(self.stop, start_after)
        order = self.random.sample(self.targets, len(self.targets))
        place, misses, backoff = 0, 0, 1.0
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                await self._stream(order[place], tally)
                return  # stopped
            except FAILURES as exc:
                status = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                tally.refused[status or type(exc).__name__] += 1
                tally.waiting.pop(self.index, None)
            if tally.resynced.get(self.index, 0.0) > began:  # the collector had answered
                misses, backoff = 0, 1.0
            misses, place = misses + 1, place + 1
            if place == len(order):
                order, place = self.random.sample(self.targets, len(self.targets)), 0
            await _sleep_or_stop(self.stop, backoff * self.random.uniform(0.5, 1.5))
            if misses >= len(order):  # every collector failed since the last that answered
                backoff = min(2 * backoff, MAX_BACKOFF)

    async def _stream(self, target: str, tally: Tally) -> None:
        call = pb_grpc.CollectorStub(self.channels.get(target, self.index)).Stream()  # type: ignore[no-untyped-call]
        try:
            hello = pb.Hello(
                host_id=f"fleet-{self.index}",
                host_name=f"fleet-{self.index}",
                agent_version="bench",
                interval_seconds=max(1, round(self.announced)),
                interval_ms=round(self.announced * 1000),
            )
            await call.write(pb.AgentMessage(hello=hello))
            await self._exchange(call, self._snapshot(), "snapshot", tally)
            tally.resynced[self.index] = time.monotonic()
            self.connected = target
            due = time.monotonic() + self.random.uniform(0, self.interval)
            while await _sleep_until_or_stop(self.stop, due):
                await self._exchange(call, self._delta(), "delta", tally)
                due = max(due + self.interval, time.monotonic())  # a late scan is not sent twice
            await call.done_writing()
        except asyncio.InvalidStateError as exc:  # written to after the collector ended the stream
            raise Ended((await call.code()).name) from exc
        finally:
            self.connected = None
            call.cancel()

    async def _exchange(self, call: Call, message: pb.AgentMessage, kind: str, tally: Tally) -> None:
        sent = time.monotonic()
        tally.waiting[self.index] = sent
        await call.write(message)
        while True:
            reply = await asyncio.wait_for(call.read(), ACK_TIMEOUT)
            if not isinstance(reply, pb.CollectorMessage):  # grpc.aio.EOF
                raise Ended((await call.code()).name)
            if reply.HasField("ack"):
                break
            kind = "snapshot"  # a Resync: the agent answers with a full snapshot
            await call.write(self._snapshot())
        del tally.waiting[self.index]
        tally.acks.append((sent, time.monotonic() - sent, kind, self.index))

    def _snapshot(self) -> pb.AgentMessage:
        self.seq += 1
        snapshot = pb.Snapshot(epoch=self.epoch, seq=self.seq, taken_at_us=time.time_ns() // 1000, sockets=self.live)
        return pb.AgentMessage(snapshot=snapshot)

    def _delta(self) -> pb.AgentMessage:
        """Closes the oldest connections and opens as many new ones: 0 to twice the mean churn."""
        count = min(self.random.randint(0, round(2 * self.churn)), len(self.live) - LISTENERS)
        closed = self.live[LISTENERS : LISTENERS + count]
        del self.live[LISTENERS : LISTENERS + count]
        opened = [fleet_socket(self.index, self.next_inode + n) for n in range(count)]
        self.next_inode += count
        self.live.extend(opened)
        self.seq += 1
        delta = pb.Delta(
            epoch=self.epoch,
            seq=self.seq,
            base_seq=self.seq - 1,
            taken_at_us=time.time_ns() // 1000,
            added=opened,
            removed=[sock.key for sock in closed],
        )
        return pb.AgentMessage(delta=delta)


class Channels:
    """gRPC channels, ``per_channel`` agents on each (1: one connection per agent, as a real fleet has)."""

    def __init__(self, per_channel: int) -> None:
        self.per_channel = per_channel
        self.open: dict[tuple[str, int], grpc.aio.Channel] = {}

    def get(self, target: str, index: int) -> grpc.aio.Channel:
        key = (target, index // self.per_channel)
        if key not in self.open:
            self.open[key] = grpc.aio.insecure_channel(target)
        return self.open[key]

    async def close(self) -> None:
        for channel in self.open.values():
            await channel.close(None)
        self.open.clear()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _sleep_until_or_stop(stop: asyncio.Event, moment: float) -> bool:
    """Wait until ``moment`` (monotonic); False if ``stop`` came first."""
    await _sleep_or_stop(stop, max(0.0, moment - time.monotonic()))
    return not stop.is_set()


class Collectors:
    """K ``sockfleet collector serve`` processes on one database, each on its own port of 127.0.0.1.

    Plain text and anonymous agents (``--insecure --allow-anonymous``): no token is checked, which saves
    each stream one lookup of its token.  Each writes its log (warnings) to a file in ``folder``.
    """

    def __init__(self, db_url: str, folder: Path) -> None:
        self.db_url = db_url
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.retired: list[float] = []  # CPU seconds of each slot's stopped processes

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def start(self, count: int) -> None:
        """Start ``count`` collectors, one after the other (the first makes the database's tables)."""
        for _ in range(count):
            proc, port = self._launch(len(self.procs), 0)
            self.procs.append(proc)
            self.ports.append(port)
            self.retired.append(0.0)

    def restart(self, which: int) -> tuple[float, float]:
        """Stop collector ``which`` (SIGTERM: each stream ends after its message in hand), start it again on
        its port; returns the seconds it was away and the CPU seconds its start took (Python, the check of
        the database's revision)."""
        stopped = time.monotonic()
        self.retired[which] += self._stop(self.procs[which])
        self.procs[which], _ = self._launch(which, self.ports[which])
        return time.monotonic() - stopped, cpu_seconds(self.procs[which].pid)

    def close(self) -> None:
        for proc in self.procs:
            self._stop(proc)

    def cpu(self) -> list[float]:
        """CPU seconds of each collector, its stopped processes included."""
        return [retired + cpu_seconds(proc.pid) for proc, retired in zip(self.procs, self.retired, strict=True)]

    def _launch(self, which: int, port: int) -> tuple[subprocess.Popen[bytes], int]:
        log = self.folder / f"collector-{which}.log"
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*SERVE, "--listen", f"127.0.0.1:{port}", "--db", self.db_url],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=ENV,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with open(log, "rb") as written:
                written.seek(offset)
                match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", written.read())
            if match:
                return proc, int(match.group(1))
            time.sleep(0.05)
        self._stop(proc)
        raise RuntimeError(f"collector {which} did not start: {log.read_text(errors='replace')[offset:][-2000:]}")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> float:
        """Stop a collector (SIGTERM; SIGKILL after 30 s); returns the CPU seconds it used in all."""
        if proc.poll() is not None:
            return 0.0
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        # Wait for the exit without reaping it: the exited process's /proc entry still holds its CPU times.
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.02)
        used = cpu_seconds(proc.pid)
        proc.wait()
        return used
