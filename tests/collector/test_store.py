"""The store and the queries, one contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import DateTime, Engine, String, func, select, text

from sockfleet.collector import convert, queries
from sockfleet.collector.errors import RejectedMessage
from sockfleet.collector.schema import observations, sockets
from sockfleet.collector.store import Store
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import limits
from tests.collector import fleet
from tests.collector.fleet import at


def ports_at(engine: Engine, minutes: float | None, **filters: Any) -> set[tuple[str, str, int | None, str | None]]:
    moment = None if minutes is None else at(minutes)
    with engine.connect() as conn:
        rows = queries.sockets_at(conn, moment, queries.Filters(**filters), only_listening=True)
    return {(r["host"], r["proto"], r["local_port"], r["process"]) for r in rows}


def socket_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(sockets)).scalar_one()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def test_snapshot_then_deltas_answer_as_of(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello("web-1")))
    nginx, ssh, dns = fleet.tcp_listener(80), fleet.tcp_listener(22, "sshd", 50), fleet.udp_bound(53)
    assert store.apply(web, convert.scan(fleet.snapshot(1, at(0), [nginx, ssh]))).acked
    assert store.apply(web, convert.scan(fleet.delta(2, at(1), added=[dns]))).acked
    assert store.apply(web, convert.scan(fleet.delta(3, at(2), removed=[nginx]))).acked
    assert ports_at(engine, 0.5) == {("web-1", "tcp", 80, "nginx"), ("web-1", "tcp", 22, "sshd")}
    assert ports_at(engine, 1.5) == {
        ("web-1", "tcp", 80, "nginx"),
        ("web-1", "tcp", 22, "sshd"),
        ("web-1", "udp", 53, "dnsd"),
    }
    assert ports_at(engine, 2.5) == {("web-1", "tcp", 22, "sshd"), ("web-1", "udp", 53, "dnsd")}
    assert ports_at(engine, 2.5, port=53) == {("web-1", "udp", 53, "dnsd")}
    assert ports_at(engine, 2.5, proto="tcp", process="sshd") == {("web-1", "tcp", 22, "sshd")}


def test_host_not_observed_is_unknown_not_empty(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello("web-1", interval=60)))
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80)])))
    assert ports_at(engine, -1) == set()  # before its first report
    assert ports_at(engine, 2) == {("web-1", "tcp", 80, "nginx")}  # within three intervals
    with engine.connect() as conn:
        later = queries.observed(conn, at(10))
        before = queries.observed(conn, at(-1))
    assert later.unknown == {web: "web-1"}
    assert before.unknown == {web: "web-1"}
    assert ports_at(engine, 10) == set()


def test_replayed_message_changes_nothing(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    first = fleet.snapshot(1, at(0), [fleet.tcp_listener(80)])
    assert store.apply(web, convert.scan(first)).acked
    again = store.apply(web, convert.scan(first))
    assert again.acked and again.replay
    assert store.apply(web, convert.scan(fleet.delta(2, at(1), added=[fleet.tcp_listener(81)]))).acked
    assert store.apply(web, convert.scan(fleet.delta(2, at(1), added=[fleet.tcp_listener(81)]))).replay
    assert socket_rows(engine) == 2
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(observations)).scalar_one() == 2


def test_delta_on_an_unknown_base_asks_for_a_snapshot(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80)])))
    outcome = store.apply(web, convert.scan(fleet.delta(5, at(1), added=[fleet.tcp_listener(81)], base=4)))
    assert not outcome.acked
    assert outcome.resync_reason == "delta is based on (1, 4), the collector holds (1, 1)"
    other_epoch = store.apply(web, convert.scan(fleet.delta(2, at(1), epoch=2, base=1)))
    assert not other_epoch.acked
    removes_unknown = store.apply(web, convert.scan(fleet.delta(2, at(1), removed=[fleet.tcp_listener(99)])))
    assert removes_unknown.resync_reason == "delta removes or changes a socket the collector does not hold"
    adds_held = store.apply(web, convert.scan(fleet.delta(2, at(1), added=[fleet.tcp_listener(80)])))
    assert adds_held.resync_reason == "a message opens a socket the collector already holds"
    assert socket_rows(engine) == 1  # nothing of the refused deltas was written


def test_a_delta_refused_at_its_commit_leaves_the_next_applied(store: Store, engine: Engine) -> None:
    """On PostgreSQL a delta's new rows, its host row and its observation go in one pipeline with the COMMIT:
    a socket already open fails there, rolls the whole message back, and the next message applies."""
    web = store.hello(convert.greeting(fleet.hello()))
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80)])))
    held = fleet.delta(2, at(1), added=[fleet.tcp_listener(81), fleet.tcp_listener(80)])
    assert store.apply(web, convert.scan(held)).resync_reason == "a message opens a socket the collector already holds"
    assert store.apply(web, convert.scan(fleet.delta(2, at(2), added=[fleet.tcp_listener(81)]))).acked
    heartbeat = store.apply(web, convert.scan(fleet.delta(3, at(3), base=2)))
    assert heartbeat.acked and not heartbeat.replay
    assert socket_rows(engine) == 2
    with engine.connect() as conn:
        kinds = conn.execute(select(observations.c.kind).order_by(observations.c.id)).scalars().all()
    assert kinds == ["snapshot", "delta", "heartbeat"]


def test_snapshot_reconciles_after_a_gap(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    store.apply(
        web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80), fleet.tcp_listener(22, "sshd", 50)]))
    )
    # The agent restarted (new epoch): port 80 closed and 8080 opened while nobody was looking.
    assert store.apply(
        web,
        convert.scan(
            fleet.snapshot(
                1, at(5), [fleet.tcp_listener(22, "sshd", 50), fleet.tcp_listener(8080, "java", 70)], epoch=2
            )
        ),
    ).acked
    assert ports_at(engine, 6) == {("web-1", "tcp", 22, "sshd"), ("web-1", "tcp", 8080, "java")}
    assert socket_rows(engine) == 3  # sshd's row was kept, not rewritten


def test_owner_change_versions_the_row_and_queues_do_not(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    listener = fleet.tcp_listener(80, "nginx", 100)
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [listener])))
    busier = pb.Socket()
    busier.CopyFrom(listener)
    busier.rx_queue = 1000
    assert store.apply(web, convert.scan(fleet.snapshot(2, at(1), [busier]))).rows_written == 0
    assert socket_rows(engine) == 1
    store.apply(web, convert.scan(fleet.delta(3, at(2), changed=[fleet.tcp_listener(80, "caddy", 120)])))
    assert ports_at(engine, 1.5) == {("web-1", "tcp", 80, "nginx")}
    assert ports_at(engine, 2.5) == {("web-1", "tcp", 80, "caddy")}
    with engine.connect() as conn:
        history = conn.execute(
            text("SELECT process, valid_from, valid_to FROM socket_history ORDER BY valid_from").columns(
                process=String, valid_from=DateTime, valid_to=DateTime
            )  # SQLite returns text otherwise
        ).all()
    assert [(h.process, h.valid_from, h.valid_to) for h in history] == [("nginx", at(0), at(2)), ("caddy", at(2), None)]


def test_unchanged_host_writes_no_socket_rows(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(p) for p in range(1000, 1500)])))
    before = socket_rows(engine)
    for seq in range(2, 12):
        outcome = store.apply(web, convert.scan(fleet.delta(seq, at(seq))))
        assert outcome.acked
        assert outcome.rows_written == 0
    assert socket_rows(engine) == before == 500
    with engine.connect() as conn:
        kinds = conn.execute(select(observations.c.kind, func.count()).group_by(observations.c.kind)).all()
    assert dict(kinds) == {"snapshot": 1, "heartbeat": 10}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: setattr(s.key, "local_port", 70000), "snapshot.sockets[1].key.local_port: 70000 is not a port"),
        (lambda s: setattr(s.key, "proto", 9), "snapshot.sockets[1].key.proto: 9 is not a known value"),
        (lambda s: setattr(s.key, "local_address", "10.0.0.300"), "is not an IP address"),
        (lambda s: setattr(s.key, "local_address", "::1"), "'::1' is not an inet address"),
        (lambda s: setattr(s, "state", 99), "snapshot.sockets[1].state: 99 is not a known value"),
        (lambda s: setattr(s, "cmdline", "x" * 5000), "snapshot.sockets[1].cmdline: 5000 characters"),
        (lambda s: setattr(s.key, "path", "/tmp/x"), "an tcp socket has no path"),
        (lambda s: setattr(s.key, "netns", 2**64 - 1), "snapshot.sockets[1].key.netns: 18446744073709551615 is larger"),
        (lambda s: setattr(s, "peer_inode", 2**63), "snapshot.sockets[1].peer_inode: 9223372036854775808 is larger"),
    ],
)
def test_malformed_snapshot_is_refused_and_nothing_is_stored(
    store: Store, engine: Engine, mutate: Any, message: str
) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    bad = fleet.tcp_listener(81)
    mutate(bad)
    with pytest.raises(RejectedMessage) as caught:
        store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80), bad])))
    assert message in str(caught.value)
    assert socket_rows(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(observations)).scalar_one() == 0


def test_absurd_time_is_refused(store: Store) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    message = fleet.snapshot(1, at(0), [])
    message.taken_at_us = 1
    with pytest.raises(RejectedMessage, match=r"^snapshot\.taken_at_us: 1 µs since the epoch is not a plausible time$"):
        store.apply(web, convert.scan(message))


def test_views_and_filters(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello("web-1")))
    db_host = store.hello(convert.greeting(fleet.hello("db-1", addresses=("10.0.0.2",))))
    store.apply(
        web,
        convert.scan(
            fleet.snapshot(
                1,
                at(0),
                [
                    fleet.tcp_listener(80),
                    fleet.tcp_listener(8081, "admin", 101, address="127.0.0.1"),
                    fleet.unix_listener("/run/docker.sock", 77),
                    fleet.connection(40000, "10.0.0.2", 5432, 555),
                ],
            )
        ),
    )
    store.apply(db_host, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(5432, "postgres", 900)])))
    assert ports_at(engine, 1, exposed=True) == {("web-1", "tcp", 80, "nginx"), ("db-1", "tcp", 5432, "postgres")}
    assert ports_at(engine, 1, host="db-1") == {("db-1", "tcp", 5432, "postgres")}
    assert ("web-1", "unix", None, "dockerd") in ports_at(engine, 1, proto="unix")
    with engine.connect() as conn:
        listeners = conn.execute(text("SELECT host, local_port FROM listeners ORDER BY host, local_port")).all()
        current = conn.execute(text("SELECT count(*) FROM current_sockets WHERE state = 'ESTABLISHED'")).scalar()
        hosts = {h["host"]: h for h in queries.host_rows(conn, at(1))}
        now = {h["host"]: h for h in queries.host_rows(conn, None)}
    assert sorted((tuple(r) for r in listeners), key=str) == sorted(
        [("db-1", 5432), ("web-1", None), ("web-1", 80), ("web-1", 8081)], key=str
    )
    assert current == 1
    assert now["web-1"]["addresses"] == hosts["web-1"]["addresses"] == "10.0.0.1"
    assert now["db-1"]["status"] == "stale"  # its last report is days old
    assert hosts["web-1"]["sockets"] == 4
    assert hosts["db-1"]["status"] == "observed"


def test_a_key_with_fields_this_collector_does_not_know_stays_one_row(store: Store, engine: Engine) -> None:
    """A newer agent may add fields to the socket key: the socket is still the one it was."""
    web = store.hello(convert.greeting(fleet.hello()))
    plain = fleet.tcp_listener(80)
    extended = pb.Socket()
    extended.CopyFrom(plain)
    # Field 99 of SocketKey, a varint: unknown here, kept by protobuf and serialized again.
    extended.key.MergeFromString(bytes([99 << 3 & 0x7F | 0x80, 99 << 3 >> 7, 1]))
    assert extended.key.SerializeToString() != plain.key.SerializeToString()
    assert store.apply(web, convert.scan(fleet.snapshot(1, at(0), [plain]))).acked
    assert store.apply(web, convert.scan(fleet.snapshot(2, at(1), [extended]))).rows_written == 0
    assert store.apply(web, convert.scan(fleet.delta(3, at(2), removed=[extended]))).acked
    assert socket_rows(engine) == 1
    assert ports_at(engine, 2.5) == set()


def test_a_scan_ahead_of_the_collectors_clock_is_refused(engine: Engine) -> None:
    store = Store(engine, max_skew=timedelta(minutes=2))
    web = store.hello(convert.greeting(fleet.hello()))
    now = datetime.now(UTC).replace(tzinfo=None)
    with pytest.raises(RejectedMessage, match=r"^snapshot\.taken_at_us: the scan is dated 3,600 s ahead"):
        store.apply(web, convert.scan(fleet.snapshot(1, now + timedelta(hours=1), [fleet.tcp_listener(80)])))
    assert socket_rows(engine) == 0
    assert store.apply(web, convert.scan(fleet.snapshot(1, now + timedelta(minutes=1), [fleet.tcp_listener(80)]))).acked


def test_an_epoch_older_than_the_hosts_is_refused_with_the_one_held(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    assert store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80)], epoch=5))).acked
    with pytest.raises(RejectedMessage) as caught:
        store.apply(web, convert.scan(fleet.snapshot(1, at(1), [fleet.tcp_listener(81)], epoch=4)))
    assert caught.value.code == "FAILED_PRECONDITION"
    assert caught.value.metadata == (("sockfleet-epoch", "5"),)
    assert "snapshot.epoch: 4 is older than the host's epoch 5" in str(caught.value)
    assert socket_rows(engine) == 1


def test_addresses_reported_with_scans_are_kept_as_intervals(store: Store, engine: Engine) -> None:
    hello = fleet.hello("web-1", addresses=("10.0.0.1",))
    hello.addresses_in_scans = True
    web = store.hello(convert.greeting(hello))

    def with_addresses(message: Any, *addresses: str) -> convert.Scan:
        message.addresses.items.extend(
            pb.InterfaceAddress(netns=fleet.NETNS, interface="eth0", address=a) for a in addresses
        )
        return convert.scan(message)

    store.apply(web, with_addresses(fleet.snapshot(1, at(0), []), "10.0.0.1"))
    store.apply(web, with_addresses(fleet.delta(2, at(2)), "10.0.0.1", "10.0.0.9"))
    store.apply(web, convert.scan(fleet.delta(3, at(4))))  # unchanged: no addresses sent
    store.apply(web, with_addresses(fleet.delta(4, at(6)), "10.0.0.9"))
    with engine.connect() as conn:
        held = {minutes: queries.host_rows(conn, at(minutes))[0]["addresses"] for minutes in (1, 3, 5, 7)}
    assert held == {1: "10.0.0.1", 3: "10.0.0.1 10.0.0.9", 5: "10.0.0.1 10.0.0.9", 7: "10.0.0.9"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: setattr(s, "process", "a\x00b"), "snapshot.sockets[1].process: holds a NUL character"),
        (lambda s: setattr(s, "pid", 2**32 - 1), "snapshot.sockets[1].pid: 4294967295 is larger than 4194304"),
        (lambda s: setattr(s, "owners", 2**32 - 1), "snapshot.sockets[1].owners: 4294967295 is larger"),
        (lambda s: setattr(s.key, "remote_port", 80), "snapshot.sockets[1].key.remote_port: a port without"),
        (
            lambda s: s.key.MergeFrom(pb.SocketKey(family=pb.FAMILY_INET6, local_address="fe80::1%\x00ev\x1b")),
            "snapshot.sockets[1].key.local_address: 'fe80::1%\\x00ev\\x1b' carries a scope",
        ),
    ],
)
def test_values_no_database_can_hold_are_refused_by_field(
    store: Store, engine: Engine, mutate: Any, message: str
) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    bad = fleet.tcp_listener(81)
    mutate(bad)
    with pytest.raises(RejectedMessage) as caught:
        store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80), bad])))
    assert message in str(caught.value)
    assert socket_rows(engine) == 0


def _at_the_limits(number: int) -> pb.Socket:
    """A socket whose every field is at the largest, or the oddest, value a database must keep as sent."""
    sock = fleet.inet("tcp", "fd00::1", 65535, "fd00::ffff:2", 60000 - number, number + 1, "ünïcödé\t\\N")
    sock.key.netns = sock.peer_inode = 2**63 - 1
    sock.key.inode = 2**63 - 1 - number
    sock.uid = sock.rx_queue = sock.tx_queue = 2**32 - 1
    sock.pid = sock.owners = limits.MAX_PID
    sock.user = "u" * limits.MAX_NAME
    sock.cmdline = "a\nb\\.\r" + "é" * (limits.MAX_TEXT - 6)
    return sock


@pytest.mark.parametrize("count", [2, 100])  # a few rows go as one INSERT, many as a COPY (on PostgreSQL)
def test_values_at_their_limits_are_stored_as_sent(store: Store, engine: Engine, count: int) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    sent = [_at_the_limits(number) for number in range(count)]
    assert store.apply(web, convert.scan(fleet.snapshot(1, at(0), sent))).acked
    columns = [sockets.c[name] for name in ("netns", "inode", "local_port", "remote_address", "remote_port")]
    columns += [sockets.c[name] for name in ("peer_inode", "uid", "user", "pid", "process", "cmdline", "owners")]
    with engine.connect() as conn:
        stored = conn.execute(select(*columns, sockets.c.rx_queue, sockets.c.tx_queue, sockets.c.flow)).all()
    assert sorted(tuple(row[:-1]) for row in stored) == sorted(
        (
            sock.key.netns,
            sock.key.inode,
            65535,
            "fd00::ffff:2",
            sock.key.remote_port,
            *(sock.peer_inode, sock.uid, sock.user, sock.pid, sock.process, sock.cmdline, sock.owners),
            *(sock.rx_queue, sock.tx_queue),
        )
        for sock in sent
    )
    assert all(row.flow for row in stored)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: h.addresses.add(netns=1, interface="eth0", address=""), "hello.addresses[1].address: empty"),
        (
            lambda h: h.addresses.add(netns=1, interface="e" * 200, address="10.0.0.7"),
            "hello.addresses[1].interface: 200 characters, more than 64",
        ),
        (lambda h: setattr(h, "host_name", "web\x00"), "hello.host_name: holds a NUL character"),
    ],
)
def test_a_bad_hello_is_refused_by_field(store: Store, engine: Engine, mutate: Any, message: str) -> None:
    hello = fleet.hello()
    mutate(hello)
    with pytest.raises(RejectedMessage, match=re.escape(message)):
        store.hello(convert.greeting(hello))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM hosts")).scalar_one() == 0


def test_hosts_at_a_moment_were_last_seen_by_then(store: Store, engine: Engine) -> None:
    web = store.hello(convert.greeting(fleet.hello()))
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [fleet.tcp_listener(80)])))
    store.apply(web, convert.scan(fleet.delta(2, at(2))))
    with engine.connect() as conn:
        then = queries.host_rows(conn, at(1))[0]
        after = queries.host_rows(conn, at(3))[0]
    assert then["last_seen"] == at(0)  # not the scan a minute later
    assert after["last_seen"] == at(2)
