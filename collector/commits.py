"""Group commit: deltas of several hosts applied in one transaction (``store.group``).

A delta that arrives while ``GROUPS`` groups are being applied waits; when one of them commits, the deltas
waiting by then (up to ``LARGEST``, one per host) go together as the next group.  On PostgreSQL groups are
applied in worker threads; on SQLite, which takes one writer, in the event loop's thread, one at a time,
each once the streams whose messages had come in by then have handed them over.  A collector with little
to do applies each delta at once, alone, as before; under load its groups grow with the load, and so does
what each transaction carries, instead of the time messages wait in line.  Each stream gets its own
message's outcome after the group's commit: its Ack, a Resync, or the refusal or database error it would
have met alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

from sockfleet.collector.store import Outcome, Store
from sockfleet.collector.store.group import Message, Result, apply_group

GROUPS = 2  # groups applied at once: one is written while the next is being made ready
LARGEST = 64  # deltas in one group

_Waiting = tuple[Message, "asyncio.Future[Outcome]"]


class GroupCommit:
    """Applies the deltas handed to ``apply`` in groups, in ``executor``'s threads; ``observe`` is told the
    size of each group."""

    def __init__(
        self,
        store: Store,
        executor: Executor | None,
        observe: Callable[[int], object] = lambda size: None,
        groups: int = GROUPS,
        largest: int = LARGEST,
    ) -> None:
        self.store = store
        self.executor = executor  # None: groups are applied in the event loop's thread, one at a time
        self.observe = observe
        self.groups = groups if executor is not None else 1
        self.largest = largest
        self.waiting: deque[_Waiting] = deque()
        self.running = 0

    async def apply(self, message: Message) -> Outcome:
        """The message's outcome once its group has committed (or what applying it raised)."""
        outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting.append((message, outcome))
        self._start()
        return await outcome

    def _start(self) -> None:
        if self.executor is None:
            if self.waiting and not self.running:
                # Applied once the streams whose messages are in already have handed them over.
                self.running = 1
                asyncio.get_running_loop().call_soon(self._in_loop)
            return
        while self.waiting and self.running < self.groups:
            group = self._next_group()
            if not group:
                return
            self.running += 1
            self.observe(len(group))
            loop = asyncio.get_running_loop()
            applying = loop.run_in_executor(self.executor, apply_group, self.store, [message for message, _ in group])
            applying.add_done_callback(partial(self._finished, group))

    def _in_loop(self) -> None:
        """The next group, applied in the event loop's thread (SQLite)."""
        group = self._next_group()
        results: list[Result] = []
        if group:
            self.observe(len(group))
            try:
                results = apply_group(self.store, [message for message, _ in group])
            except Exception as exc:  # apply_group answers each message itself; this is a defect
                results = [exc] * len(group)
        self._answer(group, results)

    def _next_group(self) -> list[_Waiting]:
        """The deltas waiting, in order, at most one per host (a host's next delta waits for the next group);
        those whose stream has gone are dropped: never acknowledged, their agent sends them again."""
        group: list[_Waiting] = []
        hosts: set[int] = set()
        later: list[_Waiting] = []
        while self.waiting and len(group) < self.largest:
            waiting = self.waiting.popleft()
            message, outcome = waiting
            if outcome.cancelled():
                continue
            if message.ref in hosts:
                later.append(waiting)
                continue
            hosts.add(message.ref)
            group.append(waiting)
        self.waiting.extendleft(reversed(later))
        return group

    def _finished(self, group: list[_Waiting], applying: asyncio.Future[list[Result]]) -> None:
        try:
            results: list[Result] = applying.result()
        except Exception as exc:  # apply_group answers each message itself; this is a defect, told to each stream
            results = [exc] * len(group)
        self._answer(group, results)

    def _answer(self, group: list[_Waiting], results: list[Result]) -> None:
        """Give each stream of a group its message's outcome; start the next group."""
        self.running -= 1
        for (_, outcome), result in zip(group, results, strict=True):
            if outcome.cancelled():
                continue
            if isinstance(result, Exception):
                outcome.set_exception(result)
            else:
                outcome.set_result(result)
        self._start()
