"""Deltas of several hosts applied together in one transaction (group commit, ``store.group``) leave exactly the
history that applying each alone leaves, and each message gets the outcome it gets alone: on PostgreSQL (one
statement of each kind for the whole group) and on SQLite (each message as alone, one commit)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.exc import OperationalError

from sockfleet.collector import convert, db
from sockfleet.collector.commits import GroupCommit
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import closed_flows, flows, host_state, observations, sockets
from sockfleet.collector.store import Outcome, Store
from sockfleet.collector.store import group as grouping
from sockfleet.collector.store.group import Message, apply_group
from sockfleet.v1 import fleet_pb2 as pb
from tests import postgres
from tests.collector import fleet
from tests.collector.fleet import at

HOSTS = 6


@pytest.fixture(params=["postgresql", "sqlite"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two empty databases (on one PostgreSQL server, or two SQLite files): one applies each message alone, the
    other in groups."""
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / name}.db" for name in ("alone", "together")]
    else:
        cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
        urls = [cluster.database() for _ in range(2)]
    engines = [db.engine(url, ping=False, init=True) for url in urls]
    try:
        for engine in engines:
            db.migrate(engine)
        yield Store(engines[0]), Store(engines[1])
    finally:
        for engine in engines:
            engine.dispose()


def history(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every history table's rows, without their ids (which differ with the order of writing) or receipt times."""
    tables = {"sockets": sockets, "flows": flows, "observations": observations, "closed_flows": closed_flows}
    found: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name, table in tables.items():
            columns = [c for c in table.c if c.name not in ("id", "received_at")]
            found[name] = sorted((tuple(row) for row in conn.execute(select(*columns))), key=repr)
        state = [c for c in host_state.c if c.name not in ("first_seen", "last_seen")]  # times of the hello
        found["host_state"] = sorted((tuple(row) for row in conn.execute(select(*state))), key=repr)
    return found


def started(
    stores: tuple[Store, ...], seed: int, deltas: int = 0, count: int = HOSTS
) -> tuple[list[int], list[fleet.Churning]]:
    """``count`` hosts greeted by each store, with a snapshot and ``deltas`` deltas applied alone."""
    hosts = [fleet.Churning(index, random.Random(seed + index)) for index in range(count)]
    refs = []
    for store in stores:
        refs = [store.hello(convert.greeting(fleet.hello(f"web-{index}"))) for index in range(count)]
    for ref, host in zip(refs, hosts, strict=True):
        messages: list[pb.Snapshot | pb.Delta] = [host.snapshot(0)]
        messages += [host.delta(1 + n) for n in range(deltas)]
        for store in stores:
            for message in messages:
                assert store.apply(ref, convert.scan(message)).acked
    return refs, hosts


def test_a_group_writes_what_each_message_alone_writes(
    two_stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, together = two_stores
    refs, hosts = started(two_stores, 7)

    def no_message_alone(*_: Any) -> Outcome:
        raise AssertionError("a message of a group was applied alone")

    monkeypatch.setattr(together, "apply", no_message_alone)
    for minute in range(1, 25):
        deltas = [host.delta(minute + index / 100) for index, host in enumerate(hosts)]
        expected = [alone.apply(ref, convert.scan(delta)) for ref, delta in zip(refs, deltas, strict=True)]
        outcomes = apply_group(together, [Message(ref, delta) for ref, delta in zip(refs, deltas, strict=True)])
        assert [outcome.acked for outcome in expected] == [True] * HOSTS
        assert outcomes == expected
    assert history(together.engine) == history(alone.engine)


def test_each_message_of_a_group_gets_its_own_outcome(
    two_stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal, a replay or a resync decided before writing leaves the rest of the group as it is: no message
    of the group is applied alone."""
    alone, together = two_stores
    refs, hosts = started(two_stores, 11, deltas=1)
    for store in two_stores:  # host 3's agent started a new epoch
        assert store.apply(refs[3], convert.scan(fleet.snapshot(1, at(1.5), [], epoch=2))).acked
    applied = hosts[0].delta(2)
    replay = fleet.delta(hosts[1].seq, at(1))  # the last delta again
    astray = fleet.delta(hosts[2].seq + 5, at(2))  # based on a message the collector never applied
    older = fleet.delta(hosts[3].seq + 1, at(2))  # from the epoch before
    ahead = fleet.delta(hosts[4].seq + 1, at(2) + timedelta(days=3650))  # dated far in the future
    applied_too = hosts[5].delta(2)
    messages = [applied, replay, astray, older, ahead, applied_too]
    applied_alone = alone_calls(together, monkeypatch)
    results = apply_group(together, [Message(ref, message) for ref, message in zip(refs, messages, strict=True)])
    for ref, message, result in zip(refs, messages, results, strict=True):
        try:
            expected: Outcome | Exception = alone.apply(ref, convert.scan(message))
        except RejectedMessage as exc:
            expected = exc
        if isinstance(expected, Exception):
            assert isinstance(result, RejectedMessage) and str(result) == str(expected)
        else:
            assert result == expected
    kinds = ["Outcome", "Outcome", "Outcome", "RejectedMessage", "RejectedMessage", "Outcome"]
    assert [type(result).__name__ for result in results] == kinds
    assert results[1].replay and not results[2].acked  # type: ignore[union-attr]
    assert applied_alone == []
    assert history(together.engine) == history(alone.engine)


def alone_calls(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The hosts whose messages ``store`` applies alone from now on, in order."""
    calls: list[int] = []
    apply = store.apply

    def recorded(ref: int, *args: Any) -> Outcome:
        calls.append(ref)
        return apply(ref, *args)

    monkeypatch.setattr(store, "apply", recorded)
    return calls


def test_a_delta_closing_a_socket_never_held_goes_alone(
    two_stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only writing finds a socket the collector does not hold: the group is rolled back, that message is applied
    alone (and answered with a resync) and the others together again.  Its host's next delta goes alone too, and
    once that one is applied, the host joins groups again."""
    alone, together = two_stores
    refs, hosts = started(two_stores, 5)
    applied_alone = alone_calls(together, monkeypatch)
    stranger = fleet.inet("tcp", "10.0.0.1", 45000, "10.9.9.9", 5432, 99, "ghost")
    for minute in (1, 2, 3):
        deltas = [host.delta(minute) for host in hosts]
        if minute == 1:
            deltas[3].removed.append(stranger.key)
        results = apply_group(together, [Message(ref, delta) for ref, delta in zip(refs, deltas, strict=True)])
        expected = [alone.apply(ref, convert.scan(delta)) for ref, delta in zip(refs, deltas, strict=True)]
        assert results == expected
        assert [outcome.acked for outcome in expected] == [index != 3 or minute > 1 for index in range(HOSTS)]
        if minute == 1:  # the agent answers the resync with a snapshot
            hosts[3].seq += 1
            snapshot = fleet.snapshot(hosts[3].seq, at(1.5), list(hosts[3].live.values()))
            for store in two_stores:
                assert store.apply(refs[3], convert.scan(snapshot)).acked
    assert applied_alone == [refs[3], refs[3], refs[3]]  # its delta, its snapshot, its next delta
    assert history(together.engine) == history(alone.engine)


def test_a_database_error_reaches_each_message_of_the_group(two_stores: tuple[Store, Store]) -> None:
    _, together = two_stores
    refs, hosts = started((together,), 3, count=2)
    with together.engine.begin() as conn:
        if together.postgres:
            conn.exec_driver_sql("ALTER TABLE observations ADD CONSTRAINT no_more CHECK (seq < 2) NOT VALID")
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER no_more BEFORE INSERT ON observations WHEN NEW.seq >= 2 "
                "BEGIN SELECT RAISE(ABORT, 'no_more'); END"
            )
    results = apply_group(together, [Message(ref, host.delta(1)) for ref, host in zip(refs, hosts, strict=True)])
    assert all(isinstance(result, Exception) and "no_more" in str(result) for result in results), results


def test_a_locked_database_answers_the_whole_group_after_one_wait(two_stores: tuple[Store, Store]) -> None:
    """A database another writer keeps locked past the store's wait fails the group, and each of its messages with
    the same error: applied one by one, each would wait as long again before its stream is answered."""
    _, together = two_stores
    refs, hosts = started((together,), 23, count=3)
    engine = together.engine
    holder: Any = None
    if together.postgres:
        with engine.begin() as conn:
            conn.execute(text(f'ALTER DATABASE "{engine.url.database}" SET lock_timeout = 200'))
    else:
        event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA busy_timeout = 200"))
    engine.dispose()
    transactions: list[int] = []
    try:
        if together.postgres:
            holder = engine.connect()
            holder.execute(select(host_state).with_for_update()).all()
        else:
            holder = sqlite3.connect(engine.url.database or "", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
        event.listen(engine, "begin", lambda _: transactions.append(1))
        results = apply_group(together, [Message(ref, host.delta(1)) for ref, host in zip(refs, hosts, strict=True)])
    finally:
        if holder is not None:
            holder.close()
    assert all(isinstance(result, OperationalError) for result in results), results
    assert len({str(result) for result in results}) == 1 and len(transactions) == 1


def test_a_group_on_a_connection_the_database_closed_goes_again_on_a_new_one(
    pg_cluster: postgres.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection whose session ended since its last use (a PostgreSQL restart, an administrator's
    ``pg_terminate_backend``) fails the group's first statement, before anything is written: the group goes
    again, together, on a new connection."""
    engine = db.engine(pg_cluster.database(), ping=False, init=True)
    killer = create_engine(engine.url)
    try:
        db.migrate(engine)
        together = Store(engine)
        refs, hosts = started((together,), 29, count=3)
        with killer.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
            assert list(ended) == [True]  # the store's one pooled connection
        applied_alone = alone_calls(together, monkeypatch)
        messages = [Message(ref, host.delta(1)) for ref, host in zip(refs, hosts, strict=True)]
        results = apply_group(together, messages)
        assert all(isinstance(result, Outcome) and result.acked for result in results), results
        assert applied_alone == []
    finally:
        killer.dispose()
        engine.dispose()


@pytest.mark.parametrize("threads", [2, 0])
def test_groups_form_while_the_database_is_busy(two_stores: tuple[Store, Store], threads: int) -> None:
    """With ``GroupCommit``, deltas handed over while a group is being written go together in the next one; each
    stream's outcome is its own message's.  Applied in the event loop's thread (``threads`` 0, as on SQLite),
    the deltas handed over in one turn of the loop go together."""
    _, together = two_stores
    refs, hosts = started((together,), 13)
    sizes: list[int] = []

    async def stream() -> list[Outcome]:
        with ThreadPoolExecutor(max(1, threads)) as executor:
            commits = GroupCommit(together, executor if threads else None, sizes.append, groups=1)
            messages = [Message(ref, host.delta(1)) for ref, host in zip(refs, hosts, strict=True)]
            return await asyncio.gather(*(commits.apply(message) for message in messages))

    outcomes = asyncio.run(stream())
    assert all(outcome.acked and not outcome.replay for outcome in outcomes)
    if threads:
        assert sizes == [1, HOSTS - 1]  # the first goes at once; the others wait for its commit and go together
    else:
        assert sizes == [HOSTS]
    with together.engine.connect() as conn:
        assert conn.execute(select(host_state.c.seq)).scalars().all() == [2] * HOSTS


@pytest.mark.parametrize("threads", [2, 0])
def test_a_group_takes_one_message_of_a_host(two_stores: tuple[Store, Store], threads: int) -> None:
    """Two streams of one host (an agent and its stale stream) never put two of its messages in one group."""
    _, together = two_stores
    [ref], [host] = started((together,), 17, count=1)
    first, second = host.delta(1), host.delta(2)
    sizes: list[int] = []

    async def streams() -> list[Outcome]:
        with ThreadPoolExecutor(max(1, threads)) as executor:
            commits = GroupCommit(together, executor if threads else None, sizes.append, groups=1)
            return list(await asyncio.gather(commits.apply(Message(ref, first)), commits.apply(Message(ref, second))))

    outcomes = asyncio.run(streams())
    assert all(outcome.acked for outcome in outcomes) and sizes == [1, 1]


def test_a_delta_that_reports_addresses_or_many_sockets_goes_alone() -> None:
    plain = fleet.delta(2, at(1), added=[fleet.tcp_listener(80)])
    assert grouping.joins(plain)
    with_addresses = fleet.delta(2, at(1))
    with_addresses.addresses.items.add(netns=fleet.NETNS, interface="eth0", address="10.0.0.9")
    assert not grouping.joins(with_addresses)
    large = fleet.delta(2, at(1), added=[fleet.tcp_listener(1000 + n) for n in range(grouping.MAX_SOCKETS + 1)])
    assert not grouping.joins(large)
