"""The collector's gRPC service: one stream per agent, each message committed before it is acknowledged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from sqlalchemy.exc import DBAPIError, OperationalError

from collector.errors import CollectorError, RejectedMessage
from collector.queries import token_host
from collector.store import Store, token_hash
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage]
log = logging.getLogger("sockfleet.collector")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a host with 500,000 sockets fits


class Collector(pb_grpc.CollectorServicer):
    """The agents' service.  Unless ``anonymous``, a stream must carry an enrolled host's token
    (``authorization: Bearer TOKEN`` metadata), and its hello must name that host."""

    def __init__(self, store: Store, anonymous: bool = False, rate_limit: float = 20.0) -> None:
        self.store = store
        self.anonymous = anonymous
        self.rate_limit = rate_limit  # messages per second per stream, with a burst of twice that; 0: no limit
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
        if not self.anonymous:
            await self._authenticate(context, first.hello.host_id)
        ref = await self._call(context, self.store.hello, first.hello)
        log.info("host %s (%s) connected from %s", first.hello.host_name, first.hello.host_id, context.peer())
        bucket = TokenBucket(self.rate_limit)
        async for message in request_iterator:
            if not bucket.take():
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"more than {self.rate_limit:g} messages per second from this agent")
            body = message.WhichOneof("body")
            if body not in ("snapshot", "delta"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {body or 'empty'} message")
            payload = getattr(message, body)
            received = time.perf_counter()
            outcome = await self._call(context, self.store.apply, ref, payload)
            self.apply_seconds.append(time.perf_counter() - received)
            if outcome.acked:
                self.applied += 0 if outcome.replay else 1
                yield pb.CollectorMessage(ack=pb.Ack(epoch=payload.epoch, seq=payload.seq))
            else:
                log.info("asking %s for a full snapshot: %s", first.hello.host_name, outcome.resync_reason)
                yield pb.CollectorMessage(resync=pb.Resync(reason=outcome.resync_reason or ""))

    async def _authenticate(self, context: Context, host_id: str) -> None:
        """The stream's token must be active and belong to the host its hello names."""
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        names = list((context.auth_context() or {}).get("x509_common_name") or [])
        if header.startswith("Bearer ") and len(header) <= 512:
            owner = await self._call(context, self._token_host, token_hash(header.removeprefix("Bearer ")))
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
                                f"this agent's credential reports for host {owner!r}, not {host_id!r}")

    def _token_host(self, digest: str) -> str | None:
        with self.store.engine.connect() as conn:
            return token_host(conn, digest)

    async def _call(  # type: ignore[no-untyped-def]
        self, context: Context, function, *args
    ):
        """Run a store call in a worker thread; its errors become gRPC statuses, and nothing is acknowledged."""
        try:
            if self.inline:
                return function(*args)
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        except RejectedMessage as exc:
            await context.abort(exc.code, str(exc))
        except (OperationalError, DBAPIError) as exc:
            log.warning("database unavailable: %s", exc.orig if hasattr(exc, "orig") else exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the collector's database is unavailable; retry")


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
