"""A large snapshot applied in steps leaves exactly what one transaction leaves, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from sockfleet.collector import convert, db
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import observations, sockets
from sockfleet.collector.store import STEP_SOCKETS, Outcome, Store
from sockfleet.collector.store.stepwise import apply_in_steps, bounds, group_of
from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.fleet import at, inet, unix

SIZE = 12 * STEP_SOCKETS + 37


def host_sockets(count: int, variant: int = 0) -> list[pb.Socket]:
    """Listeners, connections in and out (some to the listeners), Unix pairs: ``variant`` moves a few."""
    out = [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"), inet("udp", "0.0.0.0", 53, None, 0, 2, "dnsd")]
    if variant:
        out.append(inet("tcp", "0.0.0.0", 8443, None, 0, 3, "admin"))
    for i in range(count):
        inode = 100 + i
        if i % 5 == 0:
            out.append(
                inet("tcp", "10.0.0.1", 80, f"10.2.{i // 250 % 250}.{i % 250}", 40000 + i % 20000, inode, "nginx")
            )
        elif i % 5 in (1, 2):
            process = "worker" if variant and i % 97 == 1 else "client"  # an owner change
            out.append(inet("tcp", "10.0.0.1", 32768 + i % 28000, f"10.3.0.{i % 7}", 5432, inode, process))
        elif i % 5 == 3:
            if variant and i % 11 == 3:
                continue  # closed since
            out.append(unix("/run/app.sock" if i % 2 else None, inode, inode + 1, "app", pid=3000 + i % 9))
        else:
            out.append(inet("udp", "10.0.0.1", 40000 + i % 20000, "10.4.0.1", 53, inode + variant * 10**7, "resolver"))
    return out


def parts(seq: int, minutes: float, socks: list[pb.Socket], size: int = 5000, epoch: int = 1) -> list[pb.Snapshot]:
    whole = fleet.snapshot(seq, at(minutes), socks)
    chunks = [socks[i : i + size] for i in range(0, len(socks), size)]
    out = [
        pb.Snapshot(epoch=epoch, seq=seq, taken_at_us=whole.taken_at_us, sockets=chunk, more=True)
        for chunk in chunks[:-1]
    ]
    last = pb.Snapshot(epoch=epoch, seq=seq, taken_at_us=whole.taken_at_us, sockets=chunks[-1])
    last.coverage.CopyFrom(whole.coverage)
    return [*out, last]


def run(steps: Iterator[Outcome | None]) -> tuple[Outcome, int]:
    for count, step in enumerate(steps, start=1):
        if step is not None:
            return step, count
    raise AssertionError("the steps ended without an outcome")


def stored(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every socket and flow row, without row ids, in a stable order."""
    with engine.connect() as conn:
        socket_rows = conn.execute(
            text("SELECT key, state, process, pid, valid_from, valid_to, span, flow FROM sockets")
        ).all()
        flow_rows = conn.execute(
            text(
                "SELECT key, role, process, local_port, remote_address, remote_port, connections, since, valid_from, "
                "valid_to, span FROM flows"
            )
        ).all()
        observed = conn.execute(text("SELECT kind, taken_at, added, removed, changed FROM observations")).all()
    return {
        "sockets": sorted(map(tuple, socket_rows), key=repr),
        "flows": sorted(map(tuple, flow_rows), key=repr),
        "observations": sorted(map(tuple, observed), key=repr),
    }


@pytest.fixture
def twin(db_url: str, tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A second empty database of the same kind."""
    if db_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'twin.db'}"
    else:
        url = request.getfixturevalue("pg_cluster").database()
    engine = db.engine(url)
    db.migrate(engine)
    yield engine
    engine.dispose()


def test_steps_store_what_one_transaction_stores(engine: Engine, twin: Engine) -> None:
    stepped, whole = Store(engine), Store(twin)
    first, second = host_sockets(SIZE), host_sockets(SIZE, variant=1)
    for store in (stepped, whole):
        store.hello(convert.greeting(fleet.hello("big")))
    ref = 1
    outcome, count = run(apply_in_steps(stepped, ref, convert.snapshot(parts(1, 0, first))))
    assert outcome.acked and outcome.rows_written == len(first)
    assert count > SIZE // STEP_SOCKETS  # in many short transactions
    assert whole.apply(ref, convert.scan(fleet.snapshot(1, at(0), first))).acked
    assert stored(engine) == stored(twin)
    # The next scan of the same host: a listener more, some sockets gone, owners changed.
    outcome, _ = run(apply_in_steps(stepped, ref, convert.snapshot(parts(2, 1, second))))
    assert outcome.acked
    assert whole.apply(ref, convert.scan(fleet.snapshot(2, at(1), second))).acked
    assert stored(engine) == stored(twin)
    # The same scan again (a reconnection): nothing to write.
    again = parts(3, 2, second)
    outcome, _ = run(apply_in_steps(stepped, ref, convert.snapshot(again)))
    assert outcome.rows_written == 0
    replayed, _ = run(apply_in_steps(stepped, ref, convert.snapshot(again)))
    assert replayed.replay


def test_a_bad_socket_anywhere_refuses_the_whole_snapshot(engine: Engine) -> None:
    store = Store(engine)
    ref = store.hello(convert.greeting(fleet.hello("big")))
    socks = host_sockets(SIZE)
    socks[-3].key.local_port = 70000
    with pytest.raises(RejectedMessage, match=rf"snapshot\.sockets\[{len(socks) - 3}\]\.key\.local_port"):
        run(apply_in_steps(store, ref, convert.snapshot(parts(1, 0, socks))))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sockets)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(observations)).scalar_one() == 0


def test_another_stream_of_the_host_meanwhile_asks_for_a_snapshot_again(engine: Engine) -> None:
    """An agent that reconnected while its large snapshot was being applied: the first stream's steps end
    with a request for a full snapshot, and the rows both wrote are one set."""
    store = Store(engine)
    ref = store.hello(convert.greeting(fleet.hello("big")))
    socks = host_sockets(SIZE)
    first = apply_in_steps(store, ref, convert.snapshot(parts(1, 0, socks)))
    for _ in range(12):
        assert next(first) is None  # part of the way
    second, _ = run(apply_in_steps(store, ref, convert.snapshot(parts(1, 1, socks, epoch=2))))
    assert second.acked
    outcome, _ = run(first)
    assert not outcome.acked and "another stream wrote this host" in (outcome.resync_reason or "")
    with engine.connect() as conn:
        open_rows = conn.execute(text("SELECT count(*) FROM sockets WHERE valid_to IS NULL")).scalar_one()
    assert open_rows == len(socks)


def test_groups_are_ranges_of_the_digest() -> None:
    for count in (1, 2, 7, 255, 256, 1000):
        edges = [bounds(g, count) for g in range(count)]
        assert edges[0][0] == "00000000" and edges[-1][1] is None
        for (_, high), (low, _) in itertools.pairwise(edges):
            assert high == low
        for prefix in ("00000000", "7fffffff", "80000000", "ffffffff", "0badf00d"):
            digest = prefix + "0" * 24
            low, high = edges[group_of(digest, count)]
            assert low <= digest and (high is None or digest < high)
