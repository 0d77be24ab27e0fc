"""``sockfleet agent run``: scan every interval and stream to the collector.

One gRPC stream per connection.  Stop-and-wait: each Snapshot or Delta waits
for its Ack before the next message, so the agent always knows exactly which
state the collector holds, and every Delta is relative to it.  A new
connection, a Resync, or any doubt starts again with a full Snapshot.  While
the collector is away the agent keeps scanning into its spool, retries with
exponential backoff and jitter, and on reconnection sends the spooled scans in
order with their own times, so the history has no hole for the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from dataclasses import dataclass

import grpc

from agent import __version__, addresses, convert
from agent.delta import diff
from agent.errors import AgentError, SourceError
from agent.snapshot import Scanner, namespaces
from agent.spool import Spool
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger("sockfleet.agent")
ACK_TIMEOUT = 60.0
MAX_BACKOFF = 60.0


@dataclass(frozen=True, slots=True)
class Identity:
    host_id: str
    host_name: str
    boot_id: str


def identity(host: str | None, proc_root: str = "/proc") -> Identity:
    """``--host NAME`` names the host and fixes its id; else the hostname and /etc/machine-id."""
    boot_id = _read(f"{proc_root}/sys/kernel/random/boot_id")
    if host:
        return Identity(host_id=host, host_name=host, boot_id=boot_id)
    machine_id = _read("/etc/machine-id") or socket.gethostname()
    return Identity(host_id=machine_id, host_name=socket.gethostname(), boot_id=boot_id)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


def hello(ident: Identity, scanner: Scanner, interval: float) -> pb.AgentMessage:
    spaces, _ = namespaces(scanner.scope, scanner.proc_root)
    found: list[pb.InterfaceAddress] = []
    for ns in spaces:
        try:
            pairs = addresses.collect(ns)
        except SourceError as exc:
            log.warning("%s", exc)
            continue
        found.extend(pb.InterfaceAddress(netns=ns.inode, interface=name, address=addr) for name, addr in pairs)
    return pb.AgentMessage(hello=pb.Hello(
        host_id=ident.host_id, host_name=ident.host_name, agent_version=__version__, boot_id=ident.boot_id,
        addresses=found, interval_seconds=max(1, round(interval)),
    ))


# Keepalive pings notice a silent network (a cut link drops packets without any reset) within seconds.
CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                   ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


def _read_pem(option: str, path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise AgentError(f"cannot read {option} {path}: {exc.strerror}") from exc


def channel(target: str, insecure: bool, ca_file: str | None,
            client_cert: tuple[str, str] | None = None) -> grpc.aio.Channel:
    """Plain text only when asked; else TLS, verifying the collector, with a client certificate if given."""
    if insecure:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    cert_file, key_file = client_cert or (None, None)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read_pem("--ca", ca_file), private_key=_read_pem("--tls-key", key_file),
        certificate_chain=_read_pem("--tls-cert", cert_file),
    )
    return grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)


class Streamer:
    """Keeps one host's stream to the collector going until ``stop`` is set.

    Two tasks: the scanner queues a record per interval in the spool, whatever the collector is
    doing; the sender sends the oldest record, waits for its acknowledgement, and removes it.
    """

    def __init__(self, target: str, scanner: Scanner, ident: Identity, interval: float,
                 insecure: bool = False, ca_file: str | None = None, token: str | None = None,
                 spool: Spool | None = None, client_cert: tuple[str, str] | None = None) -> None:
        self.target = target
        self.scanner = scanner
        self.ident = ident
        self.interval = interval
        self.insecure = insecure
        self.ca_file = ca_file
        self.client_cert = client_cert
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.spool = spool if spool is not None else Spool()
        self.epoch = time.time_ns() // 1000
        self.seq = 0
        self.acked = 0  # messages acknowledged, for tests and logs
        self.queued: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.queued = asyncio.Event()
        scanning = asyncio.create_task(self._scan(stop))
        backoff = 1.0
        try:
            while not stop.is_set():
                try:
                    await self._connected(stop)
                    backoff = 1.0
                except (grpc.aio.AioRpcError, ConnectionError, TimeoutError, asyncio.InvalidStateError) as exc:
                    # InvalidStateError: a write after the collector ended the call (it went away mid-stream).
                    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or type(exc).__name__
                    if len(self.spool):
                        self.spool.persist()
                    delay = backoff * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not secrecy
                    log.warning("collector %s: %s; %d scans waiting; retrying in %.1fs",
                                self.target, detail, len(self.spool), delay)
                    await _sleep_or_stop(stop, delay)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            scanning.cancel()
            await asyncio.gather(scanning, return_exceptions=True)
            if len(self.spool):
                self.spool.persist()  # stopping: what was not acknowledged waits on disk for the next run

    async def _scan(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            snap = await asyncio.to_thread(self.scanner.snapshot)
            current = convert.entries(snap)
            changes = diff(self.spool.tail, current) if self.spool.tail is not None else None
            self.spool.add(current, changes, int(snap.taken_at * 1e6), convert.coverage(snap.coverage))
            assert self.queued is not None
            self.queued.set()
            await _sleep_or_stop(stop, self.interval)

    async def _next(self, stop: asyncio.Event) -> pb.Delta | None:
        """The oldest waiting record, waiting for the scanner when there is none."""
        assert self.queued is not None
        while not stop.is_set():
            head = self.spool.head()
            if head is not None:
                return head
            self.queued.clear()
            waiters = [asyncio.ensure_future(self.queued.wait()), asyncio.ensure_future(stop.wait())]
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
        return None

    async def _connected(self, stop: asyncio.Event) -> None:
        async with channel(self.target, self.insecure, self.ca_file, self.client_cert) as chan:
            call = pb_grpc.CollectorStub(chan).Stream(metadata=self.metadata)  # type: ignore[no-untyped-call]
            await call.write(await asyncio.to_thread(hello, self.ident, self.scanner, self.interval))
            full, acked_seq, sent_coverage = True, 0, b""
            try:
                while (head := await self._next(stop)) is not None:
                    self.seq += 1
                    coverage = _coverage_key(head.coverage)
                    if full:
                        snapshot = self.spool.head_snapshot()
                        snapshot.epoch, snapshot.seq = self.epoch, self.seq
                        message = pb.AgentMessage(snapshot=snapshot)
                    else:
                        delta = pb.Delta()
                        delta.CopyFrom(head)
                        delta.epoch, delta.seq, delta.base_seq = self.epoch, self.seq, acked_seq
                        if coverage == sent_coverage:
                            delta.ClearField("coverage")  # unchanged: a heartbeat stays a few bytes
                        message = pb.AgentMessage(delta=delta)
                    await call.write(message)
                    reply = await asyncio.wait_for(call.read(), ACK_TIMEOUT)
                    if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                        raise ConnectionError("the collector closed the stream")
                    if reply.HasField("resync"):
                        log.info("collector asks for a full snapshot: %s", reply.resync.reason)
                        full = True
                        continue
                    if (reply.ack.epoch, reply.ack.seq) != (self.epoch, self.seq):
                        raise ConnectionError(f"acknowledgement for ({reply.ack.epoch}, {reply.ack.seq}) "
                                              f"while waiting for ({self.epoch}, {self.seq})")
                    self.spool.pop()
                    full, acked_seq, sent_coverage = False, self.seq, coverage
                    self.acked += 1
            finally:
                call.cancel()


def _coverage_key(coverage: pb.Coverage) -> bytes:
    """What must be resent when it changes: the coverage without its timings, which differ every scan."""
    steady = pb.Coverage()
    steady.CopyFrom(coverage)
    for source in steady.sources:
        source.duration_us = 0
    return steady.SerializeToString(deterministic=True)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
