"""The collector's gRPC service: one stream per agent, each message committed before it is acknowledged.

What the service tells an agent beyond Ack and Resync travels in metadata:

* initial metadata ``sockfleet-features``: what this collector understands (``snapshot-parts``: a large
  snapshot may come in parts, ``Snapshot.more``);
* trailing metadata ``sockfleet-refused: message`` when the stream ends because the agent's last
  message was refused as invalid: retrying it cannot help, so the agent drops it and records a gap;
* trailing metadata ``sockfleet-epoch: N`` with ``FAILED_PRECONDITION`` when the message's epoch is
  older than the one the host's history holds: the agent starts a newer epoch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from collector.errors import CollectorError, RejectedMessage
from collector.queries import token_host
from collector.stepwise import apply_in_steps
from collector.store import Outcome, Store, token_hash
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage]
T = TypeVar("T")
log = logging.getLogger("sockfleet.collector")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a host with 500,000 sockets fits
MAX_SNAPSHOT_SOCKETS = 4_000_000  # in all the parts of one snapshot
FEATURES = "snapshot-parts"


@dataclass(frozen=True, slots=True)
class Peer:
    """The host a stream reports for, once its hello is accepted."""

    ref: int
    host_id: str
    name: str
    interval: float


class Collector(pb_grpc.CollectorServicer):
    """The agents' service.  Unless ``anonymous``, a stream must carry an enrolled host's token
    (``authorization: Bearer TOKEN`` metadata), and its hello must name that host."""

    def __init__(self, store: Store, anonymous: bool = False, rate_limit: float = 20.0) -> None:
        self.store = store
        self.anonymous = anonymous
        self.rate_limit = rate_limit  # repeated scans per second per stream, with a burst of twice that; 0: no limit
        self.applied = 0
        # SQLite takes one writer at a time, and a message costs it a fraction of a millisecond of CPU:
        # applying it in the event loop's thread saves the hand-off to a worker, which costs more.
        # PostgreSQL waits on the network: its messages go to worker threads.
        self.inline = store.engine.dialect.name == "sqlite"
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store")
        self.apply_seconds: deque[float] = deque(maxlen=100_000)  # receipt to acknowledgement, recent messages

    def summary(self) -> str:
        """One line on recent messages: how many, and the median and 95th percentile from receipt to Ack."""
        times = sorted(self.apply_seconds)
        if not times:
            return "no messages applied"
        p50, p95 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))]
        return (f"{self.applied} messages applied; receipt to ack p50 {p50 * 1000:.2f} ms, "
                f"p95 {p95 * 1000:.2f} ms over the last {len(times)}")

    async def Stream(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.CollectorMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be a hello")
        hello = first.hello
        if not self.anonymous:
            await self._authenticate(context, hello.host_id)
        try:
            ref = await self._run(self.store.hello, hello)
        except RejectedMessage as exc:
            log.warning("refused the hello of %r from %s: %s", hello.host_id[:255], context.peer(), exc)
            await context.abort(exc.code, str(exc))
        except DBAPIError as exc:
            await self._database_error(context, exc)
        interval = hello.interval_ms / 1000 if hello.interval_ms else max(1, hello.interval_seconds)
        peer = Peer(ref, hello.host_id, hello.host_name or hello.host_id, interval)
        await context.send_initial_metadata((("sockfleet-features", FEATURES),))
        log.info("host %s (%s) connected from %s", peer.name, peer.host_id, context.peer())
        pacer = Pacer(self.rate_limit, peer.interval)
        parts = Parts()
        async for message in request_iterator:
            body = message.WhichOneof("body")
            if body not in ("snapshot", "delta"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {body or 'empty'} message")
            payload = getattr(message, body)
            if not pacer.allow(payload.taken_at_us):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"more than {self.rate_limit:g} repeated scans per second from this agent")
            received = time.perf_counter()
            try:
                whole = parts.add(payload) if body == "snapshot" else [payload]
            except RejectedMessage as exc:
                await self._refuse(context, peer, exc)
            if whole is None:
                continue  # more parts of this snapshot follow
            outcome = await self._apply(context, peer, whole)
            self.apply_seconds.append(time.perf_counter() - received)
            pacer.stored(outcome)
            if outcome.acked:
                self.applied += 0 if outcome.replay else 1
                yield pb.CollectorMessage(ack=pb.Ack(epoch=payload.epoch, seq=payload.seq))
            else:
                log.info("asking %s for a full snapshot: %s", peer.name, outcome.resync_reason)
                yield pb.CollectorMessage(resync=pb.Resync(reason=outcome.resync_reason or ""))

    async def _apply(self, context: Context, peer: Peer, messages: list[Any]) -> Outcome:
        """Apply one message (a snapshot may be several parts): in one transaction, or, for a large snapshot,
        in steps that let other agents' messages through between them."""
        try:
            if len(messages) == 1 and not self.store.stepwise(messages[0]):
                return await self._run(self.store.apply, peer.ref, messages[0])
            # The steps run in a worker thread, on SQLite too: the event loop stays free for the other
            # streams, whose messages (applied in the loop's thread) go between two steps' transactions.
            steps = apply_in_steps(self.store, peer.ref, messages)
            while (step := await self._run(next, steps, inline=False)) is None:
                pass
            outcome: Outcome = step
            return outcome
        except RejectedMessage as exc:
            await self._refuse(context, peer, exc)
        except DBAPIError as exc:
            await self._database_error(context, exc)

    async def _refuse(self, context: Context, peer: Peer, exc: RejectedMessage) -> NoReturn:
        """End the stream with the refusal's status; an invalid message is remembered for `sockfleet hosts`."""
        log.warning("refused a message from host %s (%s): %s", peer.name, peer.host_id, exc)
        metadata = exc.metadata
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            metadata = (("sockfleet-refused", "message"), *metadata)
            try:
                await self._run(self.store.refused, peer.ref, str(exc))
            except DBAPIError as error:
                log.warning("could not record the refusal: %s", _reason(error))
        context.set_trailing_metadata(metadata)
        await context.abort(exc.code, str(exc))

    async def _database_error(self, context: Context, exc: DBAPIError) -> NoReturn:
        """A database that cannot be reached is UNAVAILABLE (the agent retries); anything else is a fault of ours."""
        if isinstance(exc, (OperationalError, InterfaceError)):
            log.warning("database unavailable: %s", _reason(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the collector's database is unavailable; retry")
        log.error("database error: %s", _reason(exc), exc_info=log.isEnabledFor(logging.DEBUG))
        await context.abort(grpc.StatusCode.INTERNAL, "the collector could not store the message")

    async def _authenticate(self, context: Context, host_id: str) -> None:
        """The stream's token must be active and belong to the host its hello names."""
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        names = list((context.auth_context() or {}).get("x509_common_name") or [])
        if header.startswith("Bearer ") and len(header) <= 512:
            try:
                owner = await self._run(self._token_host, token_hash(header.removeprefix("Bearer ")))
            except DBAPIError as exc:
                await self._database_error(context, exc)
            if owner is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked agent token")
        elif names:  # mutual TLS: the client certificate, verified by gRPC, names the host
            owner = names[0].decode("utf-8", "replace")
        else:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "no agent token or client certificate: enroll the host with "
                                "`sockfleet collector enroll`")
        if owner != host_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this agent's credential reports for host {owner!r}, not {host_id[:255]!r}")

    def _token_host(self, digest: str) -> str | None:
        with self.store.engine.connect() as conn:
            return token_host(conn, digest)

    async def _run(self, function: Callable[..., T], *args: Any, inline: bool = True) -> T:
        """Run a store call: inline on SQLite, in a worker thread on PostgreSQL."""
        if self.inline and inline:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)


def _reason(exc: DBAPIError) -> str:
    return " ".join(str(exc.orig if exc.orig is not None else exc).split())[:500]


class Parts:
    """The parts of a snapshot that comes in several (``Snapshot.more``), until its last."""

    def __init__(self) -> None:
        self.parts: list[pb.Snapshot] = []
        self.sockets = 0

    def add(self, part: pb.Snapshot) -> list[pb.Snapshot] | None:
        """The whole snapshot once its last part is in; None while parts are missing."""
        if self.parts:
            head = self.parts[0]
            if (part.epoch, part.seq, part.taken_at_us) != (head.epoch, head.seq, head.taken_at_us):
                self.parts = []
                raise RejectedMessage(f"snapshot: ({part.epoch}, {part.seq}) came before the last part of "
                                      f"({head.epoch}, {head.seq})")
        self.sockets += len(part.sockets)
        if self.sockets > MAX_SNAPSHOT_SOCKETS:
            self.parts = []
            raise RejectedMessage(f"snapshot: more than {MAX_SNAPSHOT_SOCKETS:,} sockets in its parts",
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.parts.append(part)
        if part.more:
            return None
        whole, self.parts, self.sockets = self.parts, [], 0
        return whole


class Pacer:
    """Refuses a flood of messages, never an agent catching up.

    A message dated at least half a scan interval after the previous one, and not before the host's
    stored history, is a scan of its own and always passes: an agent replaying an outage's scans sends
    them as fast as they are acknowledged.  Scan times cannot run ahead of the collector's clock (see
    ``Store.max_skew``), so such messages are bounded by the time that passed.  Anything else (the same
    scan again, scans closer together) takes a token from a bucket of ``rate`` a second.
    """

    def __init__(self, rate: float, interval: float) -> None:
        self.bucket = TokenBucket(rate)
        self.step_us = int(interval * 1e6 / 2)
        self.previous: int | None = None
        self.floor_us = 0  # the host's last stored scan time

    def allow(self, taken_at_us: int) -> bool:
        previous = self.previous
        if taken_at_us >= self.floor_us and (previous is None or taken_at_us >= previous + self.step_us):
            self.previous = taken_at_us
            return True
        return self.bucket.take()

    def stored(self, outcome: Outcome) -> None:
        if outcome.moment_us is not None:
            self.floor_us = max(self.floor_us, outcome.moment_us)


class TokenBucket:
    """``rate`` tokens a second, up to a burst of ``2 * rate``; a rate of 0 never refuses."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = 2 * rate
        self.stamp = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        moment = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (moment - self.stamp) * self.rate)
        self.stamp = moment
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def credentials(cert_file: str | None, key_file: str | None,
                client_ca_file: str | None = None) -> grpc.ServerCredentials | None:
    """TLS from a certificate and key; with ``client_ca_file``, agents must show a certificate it signed."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise CollectorError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert_file and key_file):
        raise CollectorError("--tls-cert and --tls-key go together")
    try:
        with open(cert_file, "rb") as cert, open(key_file, "rb") as key:
            pair = (key.read(), cert.read())
        client_ca = None
        if client_ca_file:
            with open(client_ca_file, "rb") as ca:
                client_ca = ca.read()
    except OSError as exc:
        raise CollectorError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


async def start(
    store: Store, listen: str, creds: grpc.ServerCredentials | None, anonymous: bool = False,
    rate_limit: float = 20.0, max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[grpc.aio.Server, int, Collector]:
    """Start serving on ``listen`` (``HOST:PORT``; port 0 picks a free one): the server, its port, the service."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Agents ping every 10 s to notice a cut network; allow it.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    service = Collector(store, anonymous, rate_limit)
    pb_grpc.add_CollectorServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    try:
        port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise CollectorError(f"cannot listen on {listen}: {exc}") from exc
    await server.start()
    return server, port, service

