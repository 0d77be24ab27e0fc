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
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from sockfleet.collector import convert
from sockfleet.collector.commits import GroupCommit
from sockfleet.collector.credentials import Credential, revoked_since, token_hash, verify
from sockfleet.collector.errors import CollectorError, RejectedMessage, UsageError
from sockfleet.collector.health import SERVICE, Health
from sockfleet.collector.metrics import REFUSAL_BY_CODE, CollectorMetrics
from sockfleet.collector.store import Outcome, Store
from sockfleet.collector.store.group import Message, joins
from sockfleet.collector.store.leases import Lease, claim, give_back, hold_for, holder_name
from sockfleet.collector.store.stepwise import apply_in_steps
from sockfleet.commandline import printable
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage]
T = TypeVar("T")
log = logging.getLogger("sockfleet.collector")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a host with 500,000 sockets fits
MAX_SNAPSHOT_SOCKETS = 4_000_000  # in all the parts of one snapshot
MAX_SNAPSHOT_BYTES = 1 << 30
MAX_ASSEMBLING = 4  # snapshots in parts the collector holds at once
PART_PATIENCE = 60.0  # seconds between two parts of a snapshot
MIN_STEP = 0.025  # seconds of scan time between two scans that pass the rate limit freely
FEATURES = "snapshot-parts"
STORE_THREADS = 8  # messages applied at once on PostgreSQL


@dataclass(frozen=True, slots=True)
class Peer:
    """The host a stream reports for, once its hello is accepted, and how far behind the collector's its
    clock was then (zero unless more than the tolerance: see ``Store.header``)."""

    ref: int
    host_id: str
    name: str
    interval: float
    behind: timedelta = timedelta(0)
    address: str = ""  # where the stream comes from, as gRPC names it (ipv4:10.0.0.5:40112)
    agent: str = ""  # the agent's version
    lease: Lease | None = None  # the stream's claim on the host (``store.leases``)

    def fields(self) -> dict[str, str]:
        """What a log line about this stream carries (``--log-format json``)."""
        return {"host": self.name, "host_id": self.host_id, "address": self.address, "agent_version": self.agent}


class Collector(pb_grpc.CollectorServicer):
    """The agents' service.  Unless ``anonymous``, a stream must carry an enrolled host's token
    (``authorization: Bearer TOKEN`` metadata) or client certificate, and its hello must name that host.

    A stream must say hello within ``hello_timeout`` seconds, and at most ``max_pending`` streams may be
    waiting to be let in at once.  A token revoked while its stream is open ends the stream within a
    second; so does the collector stopping (``close``), after the message in hand is acknowledged.
    """

    def __init__(
        self,
        store: Store,
        anonymous: bool = False,
        rate_limit: float = 20.0,
        hello_timeout: float = 10.0,
        max_pending: int = 256,
    ) -> None:
        self.store = store
        self.anonymous = anonymous
        self.rate_limit = rate_limit  # repeated scans per second per stream, with a burst of twice that; 0: no limit
        self.hello_timeout = hello_timeout
        self.max_pending = max_pending
        self.pending = 0
        self.applied = 0
        # SQLite takes one writer at a time, and a message costs it a fraction of a millisecond of CPU:
        # applying it in the event loop's thread saves the hand-off to a worker, which costs more.
        # PostgreSQL waits on the network: its messages go to worker threads.
        self.inline = store.engine.dialect.name == "sqlite"
        self.executor = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")
        self.metrics = CollectorMetrics()
        # Deltas of several hosts are committed together (``collector.commits``): on SQLite in the event loop's
        # thread too, a group at a time.
        self.group = GroupCommit(store, None if self.inline else self.executor, self.metrics.group_size.observe)
        self.apply_seconds: deque[float] = deque(maxlen=100_000)  # receipt to acknowledgement, recent messages
        self.open: dict[asyncio.Event, str | None] = {}  # each open stream's stop signal, and its token's hash
        self.handling: set[asyncio.Task[Any]] = set()  # the task of each stream, from its first message to its end
        self.greeting: set[asyncio.Event] = set()  # the stop signal of each stream waiting for its hello
        self.closing = False
        self.watcher: asyncio.Task[None] | None = None
        self.assembling = 0  # streams whose snapshot is coming in parts
        self.health = Health(store.engine)
        self.holder = holder_name()  # this process, as the holder of its hosts' leases
        self.alone = store.engine.dialect.name == "sqlite"  # a SQLite database takes one collector (``db.serving``)

    def summary(self) -> str:
        """One line on recent messages: how many, and the median and 95th percentile from receipt to Ack."""
        times = sorted(self.apply_seconds)
        if not times:
            return "no messages applied"
        p50, p95 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))]
        return (
            f"{self.applied} messages applied; receipt to ack p50 {p50 * 1000:.2f} ms, "
            f"p95 {p95 * 1000:.2f} ms over the last {len(times)}"
        )

    def close(self) -> None:
        """Stop every open stream after the message it is applying."""
        self.closing = True
        for stop in (*self.open, *self.greeting):
            stop.set()

    def revoke(self, hashes: set[str]) -> int:
        """End the open streams of these tokens; how many there were."""
        ended = [stop for stop, digest in self.open.items() if digest in hashes]
        for stop in ended:
            stop.set()
        return len(ended)

    async def watch_revocations(self, every: float = 1.0) -> None:
        """Look for tokens revoked since the last look (by any collector on the database), and end their streams."""
        since = _now()
        while True:
            await asyncio.sleep(every)
            moment = _now()
            try:
                revoked = await self._run(self._revoked_since, since - timedelta(seconds=every), inline=False)
            except DBAPIError as exc:
                self.metrics.database_errors.inc()
                log.warning("cannot look for revoked tokens: %s", _reason(exc))
                continue
            since = moment
            if revoked and (count := self.revoke(revoked)):
                log.info("ended %d stream(s) whose token was revoked", count)

    def _revoked_since(self, moment: datetime) -> set[str]:
        with self.store.engine.connect() as conn:
            return revoked_since(conn, moment)

    async def Stream(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.CollectorMessage]:
        handler = asyncio.current_task()
        assert handler is not None
        self.handling.add(handler)
        try:
            async with contextlib.aclosing(self._stream(request_iterator, context)) as replies:
                async for reply in replies:
                    yield reply
        finally:
            self.handling.discard(handler)

    async def _stream(
        self, requests: AsyncIterable[pb.AgentMessage], context: Context
    ) -> AsyncGenerator[pb.CollectorMessage]:
        peer, credential, reader = await self._admit(requests, context)
        await context.send_initial_metadata((("sockfleet-features", FEATURES),))
        stop = asyncio.Event()
        self.open[stop] = credential.token_hash if credential is not None else None
        ended = "the agent closed the stream"
        pacer, parts = Pacer(self.rate_limit, peer.interval), Parts()
        self.metrics.agents.inc()
        try:
            async for message in _until(reader, stop, lambda: PART_PATIENCE if parts.pending() else None):
                reply = await self._answer(context, peer, message, pacer, parts)
                if reply is not None:
                    yield reply
            if stop.is_set():
                ended = "the collector is stopping" if self.closing else "its token was revoked"
                await self._stopped(context)
        except DecodeError as exc:
            ended = "refused (see above)"
            await self._refuse(context, peer, RejectedMessage(_undecodable(exc)))
        except TimeoutError as exc:
            ended = str(exc)
            log.warning(
                "refused a message from host %s: %s", peer.name, exc, extra=self._refusal("timeout", context, peer)
            )
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{exc} within {PART_PATIENCE:g} s")
        except BaseException as exc:
            if stop.is_set():
                ended = "the collector is stopping" if self.closing else "its token was revoked"
            else:
                ended = _ending(exc)
            raise
        finally:
            self.assembling -= 0 if parts.pending() is None else 1
            self.open.pop(stop, None)
            self.metrics.agents.dec()
            log.info(
                "host %s (%s) disconnected: %s",
                peer.name,
                peer.host_id,
                ended,
                extra={**peer.fields(), "reason": ended},
            )
            await self._give_back(peer)  # after the log line: a collector that is stopping may cancel it

    async def _admit(
        self, requests: AsyncIterable[pb.AgentMessage], context: Context
    ) -> tuple[Peer, Credential | None, AsyncIterator[pb.AgentMessage]]:
        """Let a stream in: a free place among the streams waiting to say hello, then a hello the store accepts;
        the stream's reader.  A stream turned away before reading never makes one (gRPC's reader, made and
        never read, is reported as a coroutine never awaited)."""
        if self.closing:
            await self._stopped(context)
        if self.pending >= self.max_pending:
            log.warning(
                "refused a stream from %s: %d streams are waiting for their hello",
                context.peer(),
                self.pending,
                extra=self._refusal("busy", context),
            )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams waiting to say hello")
        self.pending += 1
        reader = aiter(requests)
        try:
            hello, credential = await self._greeted(reader, context)
            try:
                ref, lease = await self._admitted(hello, credential)
            except RejectedMessage as exc:
                name = hello.host_id[:255]
                log.warning(
                    "refused the hello of %r from %s: %s",
                    name,
                    context.peer(),
                    printable(str(exc)),
                    extra={**self._refusal(REFUSAL_BY_CODE.get(exc.code, "invalid"), context), "host_id": name},
                )
                await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
            except DBAPIError as exc:
                await self._database_error(context, exc)
        finally:
            self.pending -= 1
        peer = self._peer(ref, hello, context.peer(), lease)
        log.info(
            "host %s (%s) connected from %s, agent %s",
            peer.name,
            peer.host_id,
            peer.address,
            peer.agent,
            extra=peer.fields(),
        )
        return peer, credential, reader

    def _refusal(self, reason: str, context: Context, peer: Peer | None = None) -> dict[str, str]:
        """Count a refusal (``reason``: one of ``metrics.REFUSALS``); the fields its log line carries."""
        self.metrics.refusal(reason)
        return {**(peer.fields() if peer is not None else {}), "address": context.peer(), "reason": reason}

    def _peer(self, ref: int, hello: pb.Hello, address: str, lease: Lease | None = None) -> Peer:
        """The host of an accepted hello, with names as logs show them: an agent's text never acts on the
        terminal or journal that prints it."""
        interval = hello.interval_ms / 1000 if hello.interval_ms else max(1, hello.interval_seconds)
        behind = timedelta(0)
        if hello.sent_at_us:
            lag = _now() - convert.utc(hello.sent_at_us)  # convert.greeting checked that it is a plausible time
            behind = lag if lag > self.store.max_skew else timedelta(0)
        name = printable((hello.host_name or hello.host_id)[:255])
        agent = printable(hello.agent_version[:64]) or "unknown"
        return Peer(ref, printable(hello.host_id[:255]), name, interval, behind, address, agent, lease)

    async def _stopped(self, context: Context) -> NoReturn:
        """End a stream the collector stopped: it is stopping, or the stream's token was revoked."""
        if self.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is stopping; connect again")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this agent's token was revoked")

    async def _answer(
        self, context: Context, peer: Peer, message: pb.AgentMessage, pacer: Pacer, parts: Parts
    ) -> pb.CollectorMessage | None:
        """Apply one message of the stream: its Ack, a Resync, or None while a snapshot's parts come in."""
        body = message.WhichOneof("body")
        if body not in ("snapshot", "delta"):
            log.warning(
                "refused a message from host %s: unexpected %s message",
                peer.name,
                body or "empty",
                extra=self._refusal("invalid", context, peer),
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {body or 'empty'} message")
        payload = getattr(message, body)
        pending = parts.pending()
        await self._pace(context, peer, body, payload, pacer, pending)
        received = time.perf_counter()
        try:
            whole = parts.add(payload) if body == "snapshot" else [payload]
        except RejectedMessage as exc:
            self.assembling -= 1 if pending is not None or payload.more else 0
            await self._refuse(context, peer, exc)
        if whole is None:
            return None  # more parts of this snapshot follow
        if len(whole) > 1:
            self.assembling -= 1
        if body == "snapshot":
            parts.settled = True
        elif not parts.settled and peer.lease is not None and peer.lease.taken_over:
            # The host was another collector's: what this stream's agent had sent there may not all have
            # been applied, so a stream that takes a host over starts from a full snapshot.
            return pb.CollectorMessage(
                resync=pb.Resync(reason="a host taken over from another collector starts with a full snapshot")
            )
        outcome = await self._apply(context, peer, whole)
        self.apply_seconds.append(time.perf_counter() - received)
        self.metrics.apply_seconds.observe(self.apply_seconds[-1])
        pacer.stored(outcome)
        if outcome.acked:
            if not outcome.replay:
                self.applied += 1
                self._count(outcome.kind or body, whole[-1])
            return pb.CollectorMessage(ack=pb.Ack(epoch=payload.epoch, seq=payload.seq))
        log.info("asking %s for a full snapshot: %s", peer.name, outcome.resync_reason)
        return pb.CollectorMessage(resync=pb.Resync(reason=outcome.resync_reason or ""))

    async def _pace(
        self, context: Context, peer: Peer, body: str, payload: Any, pacer: Pacer, pending: tuple[int, int] | None
    ) -> None:
        """Refuse a message out of order or too fast; count a snapshot that begins to arrive in parts."""
        if pending is not None and body != "snapshot":
            await self._refuse(
                context, peer, RejectedMessage(f"delta: came before the last part of snapshot {pending}")
            )
        if pending is None and not pacer.allow(payload.taken_at_us):  # the parts of a snapshot count once
            log.warning(
                "refused a message from host %s: more than %g repeated scans per second",
                peer.name,
                self.rate_limit,
                extra=self._refusal("rate_limited", context, peer),
            )
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self.rate_limit:g} repeated scans per second from this agent",
            )
        if pending is None and body == "snapshot" and payload.more:
            if self.assembling >= MAX_ASSEMBLING:
                log.warning(
                    "refused a snapshot in parts from host %s: %d are coming in already",
                    peer.name,
                    self.assembling,
                    extra=self._refusal("busy", context, peer),
                )
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the collector takes {MAX_ASSEMBLING} snapshots in parts at once; retry",
                )
            self.assembling += 1

    async def _greeted(
        self, reader: AsyncIterator[pb.AgentMessage], context: Context
    ) -> tuple[pb.Hello, Credential | None]:
        """The stream's hello, within the hello timeout, and the credential it came with.  A collector that
        stops closes the streams waiting for theirs at once."""
        stop = asyncio.Event()
        self.greeting.add(stop)
        try:
            async with contextlib.aclosing(_until(reader, stop, lambda: self.hello_timeout)) as messages:
                first = await anext(messages, None)
        except TimeoutError:
            log.info(
                "closed a stream from %s: no hello within %g s",
                context.peer(),
                self.hello_timeout,
                extra=self._refusal("timeout", context),
            )
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {self.hello_timeout:g} s")
        except DecodeError as exc:
            log.warning(
                "refused a stream from %s: %s",
                context.peer(),
                _undecodable(exc),
                extra=self._refusal("invalid", context),
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable(exc))
        finally:
            self.greeting.discard(stop)
        if first is None and self.closing:
            log.info("closed a stream from %s before its hello: the collector is stopping", context.peer())
            await self._stopped(context)
        if first is None or not first.HasField("hello"):
            log.warning(
                "refused a stream from %s: its first message is not a hello",
                context.peer(),
                extra=self._refusal("invalid", context),
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be a hello")
        credential = None if self.anonymous else await self._authenticate(context, first.hello.host_id)
        return first.hello, credential

    async def _apply(self, context: Context, peer: Peer, messages: list[Any]) -> Outcome:
        """Apply one message (a snapshot may be several parts): in one transaction, or, for a large snapshot,
        in steps that let other agents' messages through between them."""
        try:
            if isinstance(messages[-1], pb.Delta):
                if joins(messages[-1]):
                    return await self.group.apply(Message(peer.ref, messages[-1], peer.behind, peer.lease))
                return await self._run(self._applied, peer, messages[-1])
            scan = convert.snapshot(messages)  # its sockets are checked as they are written
            if not self.store.stepwise(scan):
                return await self._run(self.store.apply, peer.ref, scan, peer.behind, peer.lease)
            # The steps run in a worker thread, on SQLite too: the event loop stays free for the other
            # streams, whose messages (applied in the loop's thread) go between two steps' transactions.
            steps = apply_in_steps(self.store, peer.ref, scan, peer.behind, peer.lease)
            while (step := await self._run(next, steps, inline=False)) is None:
                pass
            outcome: Outcome = step
            return outcome
        except RejectedMessage as exc:
            await self._refuse(context, peer, exc)
        except DBAPIError as exc:
            await self._database_error(context, exc)

    def _count(self, kind: str, payload: pb.Snapshot | pb.Delta) -> None:
        """Count a message applied: its kind as the store recorded it, and the gaps its agent reports."""
        self.metrics.applied_by_kind[kind].inc()
        if payload.HasField("coverage"):
            self.metrics.gaps.inc(len(payload.coverage.gaps))

    def _hello(self, hello: pb.Hello, credential: Credential | None) -> tuple[int, Lease]:
        """The host's row, and its lease for this stream: taken first (refused while another collector applies
        the host), and given back if the hello is refused."""
        interval = hello.interval_ms / 1000 if hello.interval_ms else max(1, hello.interval_seconds)
        hold = hold_for(interval)
        claimed = claim(self.store.engine, hello.host_id, self.holder, hold, alone=self.alone)
        try:
            ref = self.store.hello(convert.greeting(hello), credential)
        except BaseException:
            if claimed is not None:
                with contextlib.suppress(DBAPIError):  # the claim lapses by itself
                    give_back(self.store.engine, *claimed)
            raise
        if claimed is None:  # a new host: its row is there now
            claimed = claim(self.store.engine, hello.host_id, self.holder, hold, alone=self.alone)
            assert claimed is not None
        return ref, claimed[1]

    async def _admitted(self, hello: pb.Hello, credential: Credential | None) -> tuple[int, Lease]:
        """``_hello`` where the store works; a lease taken for a stream that ended meanwhile is given back."""
        if self.inline:
            return self._hello(hello, credential)
        taking = asyncio.get_running_loop().run_in_executor(self.executor, self._hello, hello, credential)
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, taking: asyncio.Future[tuple[int, Lease]]) -> None:
        if not taking.cancelled() and taking.exception() is None:
            with contextlib.suppress(RuntimeError):  # the collector is stopping: the claim lapses by itself
                self.executor.submit(give_back, self.store.engine, *taking.result())

    async def _give_back(self, peer: Peer) -> None:
        """A stream's end gives its host's lease back, so that another collector may take the host at once."""
        if peer.lease is None:
            return
        try:
            if self.inline:
                give_back(self.store.engine, peer.ref, peer.lease)
            else:  # a stream cancelled as the collector stops still hands its host over
                loop = asyncio.get_running_loop()
                await asyncio.shield(
                    loop.run_in_executor(self.executor, give_back, self.store.engine, peer.ref, peer.lease)
                )
        except DBAPIError as exc:  # the claim lapses by itself
            self.metrics.database_errors.inc()
            log.warning("could not give back the lease of host %s: %s", peer.name, _reason(exc))

    def _applied(self, peer: Peer, delta: pb.Delta) -> Outcome:
        """A delta checked and applied, both where the store works (a worker thread on PostgreSQL)."""
        return self.store.apply(peer.ref, convert.delta(delta), peer.behind, peer.lease)

    async def _refuse(self, context: Context, peer: Peer, exc: RejectedMessage) -> NoReturn:
        """End the stream with the refusal's status; an invalid message is remembered for `sockfleet hosts`."""
        reason = REFUSAL_BY_CODE.get(exc.code, "invalid")
        log.warning(
            "refused a message from host %s (%s): %s",
            peer.name,
            peer.host_id,
            printable(str(exc)),
            extra=self._refusal(reason, context, peer),
        )
        metadata = exc.metadata
        if exc.code == "INVALID_ARGUMENT":
            metadata = (("sockfleet-refused", "message"), *metadata)
            try:
                await self._run(self.store.refused, peer.ref, str(exc))
            except DBAPIError as error:
                self.metrics.database_errors.inc()
                log.warning("could not record the refusal: %s", _reason(error))
        context.set_trailing_metadata(metadata)
        await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    async def _database_error(self, context: Context, exc: DBAPIError) -> NoReturn:
        """A database that cannot be reached is UNAVAILABLE (the agent retries); anything else is a fault of ours."""
        self.metrics.database_errors.inc()
        if isinstance(exc, (OperationalError, InterfaceError)):
            log.warning("database unavailable: %s", _reason(exc))
            await self.health.failed(f"the database is unavailable: {_reason(exc)[:200]}")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the collector's database is unavailable; retry")
        log.error("database error: %s", _reason(exc), exc_info=log.isEnabledFor(logging.DEBUG))
        await context.abort(grpc.StatusCode.INTERNAL, "the collector could not store the message")

    async def _authenticate(self, context: Context, host_id: str) -> Credential:
        """The stream's token must be active and belong to the host its hello names (or, with mutual TLS, its
        certificate's common name must be that host's id)."""
        credential = await self._credential(context)
        if credential.host_id != host_id:
            log.warning(
                "refused a stream from %s: its credential is for host %r, its hello names %r",
                context.peer(),
                credential.host_id,
                host_id[:255],
                extra=self._refusal("permission_denied", context),
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"hello.host_id: this agent's credential reports for host {credential.host_id!r}, "
                f"not {host_id[:255]!r}",
            )
        return credential

    async def _credential(self, context: Context) -> Credential:
        """The credential the stream came with: an active token, or a client certificate verified by gRPC."""
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        names = list((context.auth_context() or {}).get("x509_common_name") or [])
        if header.startswith("Bearer ") and len(header) <= 512:
            try:
                found = await self._run(self._verify, token_hash(header.removeprefix("Bearer ")))
            except DBAPIError as exc:
                await self._database_error(context, exc)
            if found is None:
                log.warning(
                    "refused a stream from %s: unknown or revoked agent token",
                    context.peer(),
                    extra=self._refusal("unauthenticated", context),
                )
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked agent token")
            return found
        if names:  # mutual TLS: the client certificate names the host
            return Credential(names[0].decode("utf-8", "replace"), None, None)
        log.warning(
            "refused a stream from %s: no agent token or client certificate",
            context.peer(),
            extra=self._refusal("unauthenticated", context),
        )
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "no agent token or client certificate: enroll the host with `sockfleet collector enroll`",
        )

    def _verify(self, digest: str) -> Credential | None:
        with self.store.engine.begin() as conn:
            return verify(conn, digest)

    async def _run(self, function: Callable[..., T], *args: Any, inline: bool = True) -> T:
        """Run a store call: inline on SQLite, in a worker thread on PostgreSQL."""
        if self.inline and inline:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def _until(
    reader: AsyncIterator[pb.AgentMessage], stop: asyncio.Event, patience: Callable[[], float | None]
) -> AsyncGenerator[pb.AgentMessage]:
    """The stream's messages until it ends or ``stop`` is set (the collector stops, the token is revoked).

    When ``patience()`` gives a number, the next message must come within that many seconds.
    """
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            incoming = asyncio.ensure_future(anext(reader, None))
            await asyncio.wait((incoming, stopped), timeout=patience(), return_when=asyncio.FIRST_COMPLETED)
            if not incoming.done():
                incoming.cancel()
                if not stop.is_set():
                    raise TimeoutError("the next part of a snapshot did not come")
                return
            message = incoming.result()
            if message is None:
                return
            yield message
            if stop.is_set():
                return
    finally:
        stopped.cancel()


def _undecodable(exc: DecodeError) -> str:
    """A message that is not an AgentMessage (bad protobuf, a string that is not UTF-8), in one line."""
    return f"message: not a valid sockfleet.v1.AgentMessage ({' '.join(str(exc).split())})"


def _ending(exc: BaseException) -> str:
    """Why a stream ended, in a few words."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, grpc.aio.AbortError):
        return "refused (see above)"
    if isinstance(exc, GeneratorExit):
        return "the stream was closed"
    details = getattr(exc, "details", None)
    return " ".join(str(details() if callable(details) else exc).split())[:200] or type(exc).__name__


def _reason(exc: DBAPIError) -> str:
    return " ".join(str(exc.orig if exc.orig is not None else exc).split())[:500]


class Parts:
    """The parts of a snapshot that comes in several (``Snapshot.more``), until its last.

    Parts hold sockets only (the last one also the coverage and addresses), add up to at most
    ``MAX_SNAPSHOT_SOCKETS`` sockets and ``MAX_SNAPSHOT_BYTES``, and come at most ``PART_PATIENCE``
    seconds apart; nothing else of the stream may come between them.
    """

    def __init__(self) -> None:
        self.parts: list[pb.Snapshot] = []
        self.sockets = 0
        self.bytes = 0
        self.settled = False  # a whole snapshot came on this stream

    def add(self, part: pb.Snapshot) -> list[pb.Snapshot] | None:
        """The whole snapshot once its last part is in; None while parts are missing."""
        if self.parts:
            head = self.parts[0]
            if (part.epoch, part.seq, part.taken_at_us) != (head.epoch, head.seq, head.taken_at_us):
                self.clear()
                raise RejectedMessage(
                    f"snapshot: ({part.epoch}, {part.seq}) came before the last part of ({head.epoch}, {head.seq})"
                )
        if part.more and (part.HasField("coverage") or part.HasField("addresses")):
            self.clear()
            raise RejectedMessage("snapshot: only the last part of a snapshot carries its coverage and addresses")
        self.sockets += len(part.sockets)
        self.bytes += part.ByteSize()
        if self.sockets > MAX_SNAPSHOT_SOCKETS or self.bytes > MAX_SNAPSHOT_BYTES:
            self.clear()
            raise RejectedMessage(
                f"snapshot: its parts hold more than {MAX_SNAPSHOT_SOCKETS:,} sockets or "
                f"{MAX_SNAPSHOT_BYTES >> 20:,} MiB",
                "RESOURCE_EXHAUSTED",
            )
        self.parts.append(part)
        if part.more:
            return None
        whole = self.parts
        self.clear()
        return whole

    def clear(self) -> None:
        self.parts, self.sockets, self.bytes = [], 0, 0

    def pending(self) -> tuple[int, int] | None:
        """The (epoch, seq) of the snapshot whose parts are coming in, if any."""
        return (self.parts[0].epoch, self.parts[0].seq) if self.parts else None


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
        # Half the interval, and never less than MIN_STEP: an interval the hello claims cannot lift the limit.
        self.step_us = int(max(interval / 2, MIN_STEP) * 1e6)
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


def credentials(
    cert_file: str | None, key_file: str | None, client_ca_file: str | None = None
) -> grpc.ServerCredentials | None:
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
    store: Store,
    listen: str,
    creds: grpc.ServerCredentials | None,
    anonymous: bool = False,
    rate_limit: float = 20.0,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    hello_timeout: float = 10.0,
) -> tuple[grpc.aio.Server, int, Collector]:
    """Start serving on ``listen`` (``HOST:PORT``; port 0 picks a free one): the server, its port, the service.

    Stop it with ``stop``.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Agents ping every 10 s to notice a cut network; allow it.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    service = Collector(store, anonymous, rate_limit, hello_timeout)
    pb_grpc.add_CollectorServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    # Health and reflection answer anyone, without a token: they tell no more than that the service is there.
    service.health.add_to(server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise UsageError(f"cannot listen on {listen}: {_bind_failure(listen)}") from exc
    await server.start()
    await service.health.start()
    if not anonymous:
        service.watcher = asyncio.get_running_loop().create_task(service.watch_revocations())
    return server, port, service


async def stop(server: grpc.aio.Server, service: Collector, grace: float = 5.0) -> None:
    """Stop the open streams after the message each is applying, then the server."""
    service.close()
    await service.health.stop()
    if service.watcher is not None:
        service.watcher.cancel()
    await server.stop(grace)
    # gRPC reports a stream ended once its status is sent, and the stream's task may still be ending (logging,
    # giving its host's lease back): a task left running when the event loop closes is cancelled, which gRPC
    # prints as a traceback.  Each gets the grace to end.
    if service.handling:
        await asyncio.wait(set(service.handling), timeout=max(grace, 1.0))
    service.executor.shutdown(wait=False)


def _bind_failure(listen: str) -> str:
    """Why ``listen`` cannot be bound, as the system says it (gRPC only says that it failed)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "::"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return "gRPC could not bind it"
