"""The collector's health, as the standard gRPC health service (``grpc.health.v1.Health``) and ``/healthz``
say it: SERVING while its database answers, NOT_SERVING (with the reason) from the moment it does not.

The database is asked ``SELECT 1`` every few seconds, in a thread of its own so that a database that
hangs holds up neither the event loop nor the agents' messages; an unreachable database met while
applying a message turns the collector NOT_SERVING at once (``failed``), until a check answers again.
The overall service ``""`` and ``sockfleet.v1.Collector`` always have the same status.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from sockfleet.v1 import fleet_pb2 as pb

log = logging.getLogger("sockfleet.collector")
SERVICE = pb.DESCRIPTOR.services_by_name["Collector"].full_name  # sockfleet.v1.Collector
CHECK_EVERY = 2.0  # seconds between two checks of the database
CHECK_PATIENCE = 10.0  # seconds a check may take before the database counts as not answering
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The health of one collector and its database; ``problem`` is None when healthy, else why not."""

    def __init__(self, engine: Engine, every: float = CHECK_EVERY) -> None:
        self.engine = engine
        self.every = every
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.problem: str | None = "the database has not been checked yet"
        self.checked = False  # the first check's answer is no news; a change after it is
        self.checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self.task: asyncio.Task[None] | None = None
        self.stopped = False

    def add_to(self, server: aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        """Check the database now, then every ``every`` seconds until ``stop``."""
        await self.check()
        self.task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """NOT_SERVING from now on, for the clients that ask while the server finishes its streams.  The
        checks end first: one that a cancellation missed (``wait_for`` may lose one that comes as its check
        ends) stops at its next round, before the checks' thread is let go."""
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=CHECK_PATIENCE + 1)
        await self.servicer.enter_graceful_shutdown()
        self.checker.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self.checker, self._select_one), CHECK_PATIENCE)
        except TimeoutError:
            await self.failed(f"the database did not answer within {CHECK_PATIENCE:g} s")
        except DBAPIError as exc:
            await self.failed(f"the database does not answer: {_first_line(exc)}")
        else:
            await self._set(None)

    async def failed(self, problem: str) -> None:
        """NOT_SERVING because of ``problem``, until a check finds the database answering again."""
        await self._set(problem)

    async def _set(self, problem: str | None) -> None:
        if self.checked and (problem is None) != (self.problem is None):
            if problem is None:
                log.info("serving: the database answers again", extra={"reason": "database"})
            else:
                log.warning("not serving: %s", problem, extra={"reason": "database"})
        self.problem, self.checked = problem, True
        for service in ("", SERVICE):
            await self.servicer.set(service, SERVING if problem is None else NOT_SERVING)

    async def _watch(self) -> None:
        while not self.stopped:
            await asyncio.sleep(self.every)
            if not self.stopped:
                await self.check()

    def _select_one(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _first_line(exc: DBAPIError) -> str:
    cause = exc.orig if exc.orig is not None else exc
    return " ".join(str(cause).split())[:200] or type(cause).__name__
