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
from typing import Any

import grpc

from sockfleet.agent import __version__, addresses, convert, targets
from sockfleet.agent.delta import diff
from sockfleet.agent.errors import AgentError, SourceError
from sockfleet.agent.events import Closings, Events
from sockfleet.agent.records import Snapshot
from sockfleet.agent.snapshot import Scanner, namespaces
from sockfleet.agent.spool import Spool
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc
from sockfleet.v1 import limits

log = logging.getLogger("sockfleet.agent")
MAX_BACKOFF = 60.0

# How long the agent waits for the answer to a message before it leaves the collector for the next one
# (``ack_wait``).  A collector that answers nothing (stopped, or stuck on its database) must not hold its
# hosts for long, while one that is merely slow (acknowledging after seconds in a reconnect storm) must
# not send all its agents at once to the next collector, each with a full snapshot.
ACK_INTERVALS = 3  # the collector's claim on the host outlives its last message by 3 intervals: before that,
# the next collector refuses the host anyway
DELTA_WAIT = 10.0  # seconds, at least, for a delta or a heartbeat
SNAPSHOT_WAIT = 60.0  # for a full snapshot: after a restart it queues behind every other host's
SOCKET_WAIT = 0.001  # and per socket the message carries: a large snapshot is applied in steps, for minutes
FEATURES_WAIT = 15.0  # for the collector to say what it understands, before a large snapshot


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
    """The first message of a stream.  Its addresses are for collectors that do not read them in scans."""
    spaces, _ = namespaces(scanner.scope, scanner.proc_root)
    found: list[convert.Address] = []
    for ns in spaces:
        try:
            pairs = addresses.collect(ns)
        except SourceError as exc:
            log.warning("%s", exc)
            continue
        found.extend((ns.inode, name, addr) for name, addr in pairs)
    return convert.hello((ident.host_id, ident.host_name, ident.boot_id), found, interval, __version__)


def ack_wait(interval: float, sockets: int, snapshot: bool) -> float:
    """Seconds to wait for the Ack of a message carrying ``sockets`` sockets (added, removed, changed or
    closed, for a delta): a few intervals, at least ``DELTA_WAIT`` or ``SNAPSHOT_WAIT``, and more for a
    large message.  The collector sends nothing before the Ack, however long the message takes."""
    return max(ACK_INTERVALS * interval, SNAPSHOT_WAIT if snapshot else DELTA_WAIT) + sockets * SOCKET_WAIT


# Keepalive pings notice a collector that stopped (SIGSTOP) or a silent network (a cut link drops packets
# without any reset): 10 s after the last byte from the collector the agent pings it, and leaves when no
# answer comes within 5 s.  gRPC core waits for a ping's answer ``grpc.http2.ping_timeout_ms`` (a minute
# by default); ``grpc.keepalive_timeout_ms`` alone does not shorten that.
KEEPALIVE_TIME = 10.0
PING_TIMEOUT = 5.0
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
    ("grpc.keepalive_timeout_ms", int(PING_TIMEOUT * 1000)),
    ("grpc.http2.ping_timeout_ms", int(PING_TIMEOUT * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def _read_pem(option: str, path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise AgentError(f"cannot read {option} {path}: {exc.strerror}") from exc


def channel(
    target: str,
    insecure: bool,
    ca_file: str | None,
    client_cert: tuple[str, str] | None = None,
    name: str | None = None,
) -> grpc.aio.Channel:
    """Plain text only when asked; else TLS, verifying the collector (its certificate must hold ``name`` when
    ``target`` is one of the addresses a name resolved to), with a client certificate if given."""
    if insecure:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    cert_file, key_file = client_cert or (None, None)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read_pem("--ca", ca_file),
        private_key=_read_pem("--tls-key", key_file),
        certificate_chain=_read_pem("--tls-cert", cert_file),
    )
    options = CHANNEL_OPTIONS if name is None else (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(target, creds, options=options)


# Causes of a failed connection, as gRPC's core words them, and what they mean to an operator.
CAUSES = (
    ("Connection refused", "connection refused (is it running, and listening there?)"),
    ("No route to host", "no route to the host"),
    ("Connection timed out", "the connection timed out"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS: its certificate is not signed by {ca}"),
    ("is not in peer certificate", "TLS: its certificate is not for the name the agent connects to"),
    ("WRONG_VERSION_NUMBER", "TLS: it does not speak TLS (is it serving plain text, --insecure?)"),
    ("certificate required", "TLS: it wants a client certificate (--tls-cert, --tls-key)"),
)


class Observer:
    """What a ``Streamer`` tells of its work as it goes (``agent.metrics`` counts it); by default nothing."""

    def scanned(self, snap: Snapshot, closed: Closings | None, seconds: float) -> None:
        """A scan that took ``seconds`` is queued."""

    def scan_failed(self) -> None:
        """A scan failed (it is logged); the next one comes an interval later."""

    def connecting(self) -> None:
        """A connection to the collector begins."""

    def disconnected(self) -> None:
        """The stream ended, for whatever reason."""

    def sent(self, kind: str) -> None:
        """A ``snapshot`` or a ``delta`` went out."""

    def acked(self) -> None:
        """The collector acknowledged the message sent last."""

    def dropped(self) -> None:
        """The collector refused a scan as invalid: it is dropped, and the gap recorded."""


class Streamer:
    """Keeps one host's stream to a collector going until ``stop`` is set (``target``: one or more
    comma-separated HOST:PORT, tried in a shuffled order: ``agent.targets``).

    Two tasks: the scanner queues a record per interval in the spool, whatever the collector is
    doing; the sender sends the oldest record, waits for its acknowledgement, and removes it.
    """

    def __init__(
        self,
        target: str,
        scanner: Scanner,
        ident: Identity,
        interval: float,
        insecure: bool = False,
        ca_file: str | None = None,
        token: str | None = None,
        spool: Spool | None = None,
        client_cert: tuple[str, str] | None = None,
        events: Events | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.rotation = targets.Rotation(targets.parse(target))
        self.observer = observer or Observer()
        self.events = events
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
        self.dropped = 0  # messages the collector refused, dropped
        self.queued: asyncio.Event | None = None
        self.up = False  # a stream is open and the collector answered on it

    @property
    def target(self) -> str:
        """The collector the agent streams to, or tries next."""
        return self.rotation.current.label

    def fields(self, reason: str | None = None) -> dict[str, str]:
        """What a log line about the stream carries (``--log-format json``)."""
        fields = {"host": self.ident.host_name, "address": self.target, "agent_version": __version__}
        return fields if reason is None else {**fields, "reason": reason}

    async def run(self, stop: asyncio.Event) -> None:
        self.queued = asyncio.Event()
        scanning = asyncio.create_task(self._scan(stop))
        backoff = 1.0
        try:
            while not stop.is_set():
                try:
                    self.observer.connecting()
                    log.debug("connecting to the collector at %s", self.target, extra=self.fields())
                    await self._connected(stop)
                    log.info(
                        "disconnected from the collector at %s: the agent is stopping",
                        self.target,
                        extra=self.fields("stopping"),
                    )
                    backoff = 1.0
                except grpc.aio.AioRpcError as exc:
                    if self._settled(exc):
                        continue  # the collector said what to change: reconnect at once
                    backoff = await self._failed(stop, self.explain(exc.code(), exc.details() or ""), backoff)
                except TimeoutError as exc:  # from ``_reply``: it names the collector
                    backoff = await self._failed(stop, str(exc) or f"no answer from {self.target}", backoff)
                except ConnectionError as exc:
                    detail = str(exc) or type(exc).__name__
                    backoff = await self._failed(stop, f"the collector at {self.target}: {detail}", backoff)
                finally:
                    self.up = False
        finally:
            scanning.cancel()
            await asyncio.gather(scanning, return_exceptions=True)
            if self.events is not None:
                self.events.close()
            if len(self.spool):
                self.spool.persist()  # stopping: what was not acknowledged waits on disk for the next run

    async def _failed(self, stop: asyncio.Event, detail: str, backoff: float) -> float:
        """After a stream that failed or could not start: wait, then try the next collector; the next wait.
        The wait starts again from a second after a stream the collector answered, and doubles (to a minute)
        each time every collector has failed in turn."""
        if self.up:
            self.rotation.answered()
            backoff = 1.0
        tried = self.target
        every = self.rotation.failed()
        if self.target != tried and not self.rotation.stale:
            detail = f"{detail}; next: the collector at {self.target}"
        await _sleep_or_stop(stop, self._retry(detail, backoff))
        return min(backoff * 2, MAX_BACKOFF) if every else backoff

    def _retry(self, detail: str, backoff: float) -> float:
        if len(self.spool):
            self.spool.persist()
        delay = backoff * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not secrecy
        log.warning(
            "%s%s; %d scans waiting; retrying in %.1fs",
            "disconnected: " if self.up else "",
            detail,
            len(self.spool),
            delay,
            extra=self.fields(detail),
        )
        return delay

    def explain(self, code: grpc.StatusCode, details: str) -> str:
        """What went wrong, cause first, from gRPC's status (whose core messages name their layers instead)."""
        where = f"the collector at {self.target}"
        text = " ".join(details.split())
        for marker, meaning in CAUSES:
            if marker in text:
                return f"cannot connect to {where}: {meaning.format(ca=self.ca_file or 'the system CAs')}"
        if "ping timeout" in text or "keepalive watchdog timeout" in text:
            return (
                f"no answer within {KEEPALIVE_TIME + PING_TIMEOUT:g} s from {where}: not even to HTTP/2 pings "
                "(is it stopped, or the network cut?)"
            )
        if code == grpc.StatusCode.UNAVAILABLE and "Socket closed" in text and self.insecure and not self.up:
            return (
                f"{where} closed the connection at once: it may serve TLS while this agent speaks plain text "
                "(--insecure)"
            )
        if "errors resolving" in text or "DNS resolution failed" in text:
            return f"cannot connect to {where}: its name does not resolve"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return f"{where} refused this agent: {text}"
        return f"{where}: {text or code.name}"

    def _settled(self, exc: grpc.aio.AioRpcError) -> bool:
        """Act on an ending the collector explained: a refused message is dropped (retrying it cannot help),
        an epoch older than the host's is replaced.  Whether the stream can start again at once."""
        metadata = _metadata(exc.trailing_metadata())
        if metadata.get("sockfleet-refused") == "message" and len(self.spool):
            head = self.spool.head()
            assert head is not None
            log.warning(
                "the collector refused the scan taken at %s: %s; it is dropped and the gap recorded",
                _when(head.taken_at_us),
                exc.details(),
            )
            self.spool.drop_head(exc.details() or exc.code().name)
            self.dropped += 1
            self.observer.dropped()
            return True
        held = metadata.get("sockfleet-epoch", "")
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and held.isdigit():
            self.epoch = max(self.epoch, int(held)) + 1
            log.warning("the collector holds a newer epoch for this host (%s); starting epoch %d", held, self.epoch)
            return True
        return False

    async def _scan(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                began = time.perf_counter()
                snap, closed = await asyncio.to_thread(self._snapshot)
                took = time.perf_counter() - began
                current = convert.entries(snap)
                changes = diff(self.spool.tail, current) if self.spool.tail is not None else None
                found = list(snap.addresses) if snap.addresses is not None else None
                coverage = convert.coverage(snap.coverage)
                if closed is not None:
                    coverage.events_unseen.extend(convert.unseen(closed.unseen))
                closings = convert.closings(closed) if closed is not None else None
                self.spool.add(current, changes, int(snap.taken_at * 1e6), coverage, found, closings)
            except Exception as exc:  # one failed scan must not end the agent's scanning
                self.observer.scan_failed()
                log.error(
                    "scan failed: %s; the next one in %gs", exc, self.interval, exc_info=log.isEnabledFor(logging.DEBUG)
                )
            else:
                self.observer.scanned(snap, closed, took)
                assert self.queued is not None
                self.queued.set()
            await _sleep_or_stop(stop, self.interval)

    def _snapshot(self) -> tuple[Snapshot, Closings | None]:
        """One scan, and the connections that closed since the previous one (when listening to events)."""
        if self.events is None:
            return self.scanner.snapshot(), None
        self.events.hold()
        try:
            snap = self.scanner.snapshot()
        except BaseException:
            self.events.learn(None)
            raise
        self.events.learn(snap)
        self.events.watch(self.scanner.spaces)
        return snap, self.events.take()

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
        await asyncio.to_thread(self.rotation.resolve)  # DNS may be slow: the scanner goes on meanwhile
        where = self.rotation.current
        name = None if where.address == where.name else where.host
        async with channel(where.address, self.insecure, self.ca_file, self.client_cert, name) as chan:
            call = pb_grpc.CollectorStub(chan).Stream(metadata=self.metadata)  # type: ignore[no-untyped-call]
            # A collector announces what it understands as soon as it accepts the hello; an older one says
            # nothing until its first answer, so the agent never waits for this before sending.
            features = asyncio.ensure_future(call.initial_metadata())
            try:
                await call.write(await asyncio.to_thread(hello, self.ident, self.scanner, self.interval))
                full, acked_seq, sent_coverage, replied = True, 0, b"", False
                while (head := await self._next(stop)) is not None:
                    self.seq += 1
                    coverage = _coverage_key(head.coverage)
                    if full:
                        sockets = await self._send_snapshot(call, features)
                        kind = f"snapshot of {sockets:,} sockets"
                    else:
                        message = self._delta(head, acked_seq, coverage == sent_coverage)
                        await call.write(message)
                        sockets = _carried(message.delta)
                        kind = f"delta of {sockets:,} sockets" if sockets else "heartbeat"
                    self.observer.sent("snapshot" if full else "delta")
                    reply = await self._reply(call, kind, ack_wait(self.interval, sockets, full))
                    if not replied:
                        replied = self.up = True
                        log.info(
                            "connected to the collector at %s; %d scans waiting",
                            self.target,
                            len(self.spool),
                            extra=self.fields(),
                        )
                    if reply.HasField("resync"):
                        log.info("collector asks for a full snapshot: %s", reply.resync.reason)
                        full = True
                        continue
                    self.spool.pop()
                    full, acked_seq, sent_coverage = False, self.seq, coverage
                    self.acked += 1
                    self.observer.acked()
            except asyncio.InvalidStateError:
                # A write after the collector ended the call ("RPC already finished"): its status says why.
                await _raise_status(call)
                raise ConnectionError("the collector ended the stream") from None
            finally:
                features.cancel()
                call.cancel()
                self.observer.disconnected()

    def _delta(self, head: pb.Delta, acked_seq: int, same_coverage: bool) -> pb.AgentMessage:
        """The head as a delta on the last acknowledged scan; coverage only when it changed."""
        delta = pb.Delta()
        delta.CopyFrom(head)
        delta.epoch, delta.seq, delta.base_seq = self.epoch, self.seq, acked_seq
        if same_coverage:
            delta.ClearField("coverage")  # unchanged: a heartbeat stays a few bytes
        return pb.AgentMessage(delta=delta)

    async def _reply(self, call: Any, kind: str, wait: float) -> pb.CollectorMessage:
        """The collector's answer to the message just sent (``kind``, as logs name it): a Resync, or the Ack
        of exactly that message; ``TimeoutError`` when none comes within ``wait`` seconds."""
        try:
            reply = await asyncio.wait_for(call.read(), wait)
        except TimeoutError:
            silence = f"no answer within {wait:.0f} s from the collector at {self.target} to a {kind}"
            raise TimeoutError(silence) from None
        if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
            await _raise_status(call)
            raise ConnectionError("the collector closed the stream")
        if not reply.HasField("resync") and (reply.ack.epoch, reply.ack.seq) != (self.epoch, self.seq):
            raise ConnectionError(
                f"acknowledgement for ({reply.ack.epoch}, {reply.ack.seq}) while waiting for ({self.epoch}, {self.seq})"
            )
        return reply  # type: ignore[no-any-return]

    async def _send_snapshot(self, call: Any, features: asyncio.Future[Any]) -> int:
        """The head as a full snapshot; in parts when it is large and the collector takes parts.  Its sockets."""
        snapshot = self.spool.head_snapshot()
        snapshot.epoch, snapshot.seq = self.epoch, self.seq
        size, count = limits.PART_SOCKETS, len(snapshot.sockets)
        if count > size:
            await asyncio.wait({features}, timeout=FEATURES_WAIT)
            announced = features.done() and not features.cancelled() and features.exception() is None
            offered = dict(features.result() or ()) if announced else {}
            if "snapshot-parts" in str(offered.get("sockfleet-features", "")).split(","):
                sockets = snapshot.sockets
                for start in range(0, len(sockets) - size, size):
                    part = pb.Snapshot(
                        epoch=self.epoch,
                        seq=self.seq,
                        taken_at_us=snapshot.taken_at_us,
                        sockets=sockets[start : start + size],
                        more=True,
                    )
                    await call.write(pb.AgentMessage(snapshot=part))
                del sockets[: (len(sockets) - 1) // size * size]
        await call.write(pb.AgentMessage(snapshot=snapshot))
        return count


async def _raise_status(call: Any) -> None:
    """After the collector ended a call: its status as an ``AioRpcError`` (with its trailing metadata)."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(
            code, await call.initial_metadata(), await call.trailing_metadata(), await call.details(), None
        )


def _metadata(metadata: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in (metadata or ())}


def _when(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6))


def _carried(delta: pb.Delta) -> int:
    """The sockets (and closed connections) a delta carries, which its collector writes one by one."""
    return len(delta.added) + len(delta.removed) + len(delta.changed) + len(delta.closed.flows)


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
