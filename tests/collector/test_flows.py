"""Flows: the store folds connected sockets as the rule says, the migration folds old history the same way,
and edges read from flows at a moment are the edges read from the socket rows themselves."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from sockfleet import connections
from sockfleet.collector import convert, db, flows
from sockfleet.collector.schema import flows as flow_table
from sockfleet.collector.schema import sockets
from sockfleet.collector.store import Store
from sockfleet.collector.talks import Window, edges
from sockfleet.v1 import fleet_pb2 as pb
from tests.collector import fleet
from tests.collector.fleet import at, inet

ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
OUTSIDE_SERVER, OUTSIDE_CLIENT = "93.184.216.34", "203.0.113.9"
STEPS = 24


class Fleet:
    """Four hosts whose connections come and go at random, each reported every minute through the store.

    Host 0 serves HTTP on the wildcard and DNS over UDP; host 1 serves PostgreSQL on its own address
    only, and redis on loopback.  Connections between hosts are stored from both ends; outsiders
    call in, hosts call out, and some pairs of hosts talk without any listener (both ports kept).
    """

    def __init__(self, store: Store, seed: int) -> None:
        self.store, self.rng = store, random.Random(seed)
        self.refs = [
            store.hello(convert.greeting(fleet.hello(f"h{n}", addresses=(a,)))) for n, a in enumerate(ADDRESSES)
        ]
        self.open: list[dict[tuple[Any, ...], pb.Socket]] = [{} for _ in ADDRESSES]
        self.seq = [0 for _ in ADDRESSES]
        self.serial = 100
        self.listeners = [
            [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"), inet("udp", "0.0.0.0", 53, None, 0, 2, "dnsd")],
            [
                inet("tcp", ADDRESSES[1], 5432, None, 0, 3, "postgres"),
                inet("tcp", "127.0.0.1", 6379, None, 0, 4, "redis"),
            ],
            [],
            [],
        ]
        self.conversations: list[list[tuple[int, pb.Socket]]] = []

    def _port(self) -> int:
        self.serial += 1
        return 32768 + self.serial

    def _socket(
        self, host: int, proto: str, local: str, local_port: int, remote: str, remote_port: int, process: str
    ) -> tuple[int, pb.Socket]:
        self.serial += 1
        return host, inet(proto, local, local_port, remote, remote_port, self.serial, process)

    def _conversation(self) -> list[tuple[int, pb.Socket]]:
        rng, kind = self.rng, self.rng.randrange(7)
        client = rng.randrange(len(ADDRESSES))
        process = rng.choice(["app", "job"])
        port = self._port()
        if kind <= 1:  # a call to a host's service, seen from both ends
            server, service, proto = rng.choice([(0, 80, "tcp"), (1, 5432, "tcp"), (0, 53, "udp")])
            serving = {80: "nginx", 5432: "postgres", 53: "dnsd"}[service]
            c_addr, s_addr = ADDRESSES[client], ADDRESSES[server]
            if proto == "udp":  # the server's UDP socket is the unconnected listener itself
                return [self._socket(client, "udp", c_addr, port, s_addr, 53, process=process)]
            return [
                self._socket(client, "tcp", c_addr, port, s_addr, service, process=process),
                self._socket(server, "tcp", s_addr, service, c_addr, port, process=serving),
            ]
        if kind == 2:  # redis over loopback, inside host 1
            return [
                self._socket(1, "tcp", "127.0.0.1", port, "127.0.0.1", 6379, process=process),
                self._socket(1, "tcp", "127.0.0.1", 6379, "127.0.0.1", port, process="redis"),
            ]
        if kind == 3:  # a call out of the fleet
            return [self._socket(client, "tcp", ADDRESSES[client], port, OUTSIDE_SERVER, 443, process=process)]
        if kind == 4:  # an outsider calls in
            return [self._socket(0, "tcp", ADDRESSES[0], 80, OUTSIDE_CLIENT, port, process="nginx")]
        # Two hosts talk with no listener on either side: the ports decide (lower port, or ephemeral port).
        server = (client + 1) % len(ADDRESSES)
        low, high = (5000 + self.serial % 50, 6000) if kind == 5 else (7000 + self.serial % 50, port)
        return [
            self._socket(client, "tcp", ADDRESSES[client], high, ADDRESSES[server], low, process=process),
            self._socket(server, "tcp", ADDRESSES[server], low, ADDRESSES[client], high, process="peer"),
        ]

    def run(self) -> None:
        for step in range(STEPS):
            changes: list[dict[str, list[pb.Socket]]] = [{"added": [], "removed": [], "changed": []} for _ in ADDRESSES]
            if step == 0:
                for host, listening in enumerate(self.listeners):
                    changes[host]["added"] += listening
            self._churn(changes)
            for _ in range(self.rng.randrange(3, 9)):
                conversation = self._conversation()
                self.conversations.append(conversation)
                for host, sock in conversation:
                    changes[host]["added"].append(sock)
            for host, ref in enumerate(self.refs):
                self._send(host, ref, step, changes[host])

    def _churn(self, changes: list[dict[str, list[pb.Socket]]]) -> None:
        """Some conversations end, both ends in the same minute; in a few, the client end closes first."""
        for conversation in list(self.conversations[:-3]):
            roll = self.rng.random()
            if roll < 0.25:  # both ends go in the same minute
                self.conversations.remove(conversation)
                for host, sock in conversation:
                    changes[host]["removed"].append(sock)
            elif roll < 0.3 and conversation[0][1].state == pb.STATE_ESTABLISHED:  # the client end closes first
                host, sock = conversation[0]
                closing = pb.Socket()
                closing.CopyFrom(sock)
                closing.state = pb.STATE_FIN_WAIT1
                conversation[0] = (host, closing)
                changes[host]["changed"].append(closing)

    def _send(self, host: int, ref: int, step: int, change: dict[str, list[pb.Socket]]) -> None:
        for sock in change["removed"]:
            self.open[host].pop(_key(sock))
        for sock in change["added"] + change["changed"]:
            self.open[host][_key(sock)] = sock
        self.seq[host] += 1
        if step % 5 == 0:
            message: Any = fleet.snapshot(self.seq[host], at(step), list(self.open[host].values()))
        else:
            message = fleet.delta(
                self.seq[host], at(step), added=change["added"], removed=change["removed"], changed=change["changed"]
            )
        assert self.store.apply(ref, convert.scan(message)).acked


def _key(sock: pb.Socket) -> tuple[Any, ...]:
    k = sock.key
    return (k.proto, k.inode, k.local_address, k.local_port, k.remote_address, k.remote_port)


FLOW_FIELDS = ("host_ref", "key", *flows.IDENTITY_COLUMNS, "connections", "since", "valid_from", "valid_to", "span")


def stored_flows(engine: Engine) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        return {tuple(row._mapping[f] for f in FLOW_FIELDS) for row in conn.execute(select(flow_table))}


def rebuilt(engine: Engine) -> tuple[set[tuple[Any, ...]], dict[int, str]]:
    versions: list[dict[str, Any]] = []
    with engine.connect() as conn:
        rows = conn.execute(select(sockets)).all()
    keys = flows.rebuild(rows, versions.append)
    return {tuple(v[f] for f in FLOW_FIELDS) for v in versions}, keys


def brief(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            r["proto"],
            r["client_host"] or "",
            r["client_address"] or "",
            r["client_process"] or "",
            r["server_host"] or "",
            r["server_address"] or "",
            r["server_port"] or 0,
            r["server_process"] or "",
            r["connections"],
            r["direction"],
        )
        for r in rows
    )


@pytest.fixture
def random_fleet(engine: Engine) -> Fleet:
    simulated = Fleet(Store(engine), seed=5)
    simulated.run()
    return simulated


def test_store_keeps_flows_as_the_rule_makes_them(random_fleet: Fleet, engine: Engine) -> None:
    expected, keys = rebuilt(engine)
    assert stored_flows(engine) == expected
    with engine.connect() as conn:
        stored = {
            row.id: row.flow for row in conn.execute(select(sockets.c.id, sockets.c.flow)) if row.flow is not None
        }
    assert stored == keys
    roles = {row[4] for row in expected}
    assert roles == {connections.SERVED, connections.CALLING, connections.NOT_FOLDED}
    assert len(expected) > 50
    assert any(row[13] is None for row in expected) and any(row[11] != row[12] for row in expected)


def test_migration_folds_existing_history(random_fleet: Fleet, engine: Engine) -> None:
    before = stored_flows(engine)
    db.downgrade(engine, "0008")
    db.migrate(engine)
    assert stored_flows(engine) == before


def test_edges_from_flows_are_the_edges_from_sockets(random_fleet: Fleet, engine: Engine) -> None:
    """At each moment: ``talks --at`` (flows) answers as a window of no length over the socket rows."""
    with engine.connect() as conn:
        for minute in (0.5, 3.5, 7.5, 12.5, 19.5, 23.5):
            from_flows = edges(conn, Window(at(minute)))
            from_sockets = edges(conn, Window(at(minute), at(minute)))
            assert brief(from_flows) == brief(from_sockets), minute
            for name in ("h0", "h2"):
                narrowed = edges(conn, Window(at(minute)), host=name)
                assert brief(narrowed) == brief(
                    [e for e in from_sockets if name in (e["client_host"], e["server_host"])]
                )
        latest = edges(conn, Window(None))
        assert brief(latest) == brief(edges(conn, Window(at(STEPS), at(STEPS))))
        assert {e["direction"] for e in latest} >= {"listener", "ephemeral port", "lower port"}
        assert any(e["server_host"] is None for e in latest) and any(e["client_host"] is None for e in latest)


def test_an_accepted_connection_stays_served_after_its_listener_closes(engine: Engine) -> None:
    """The role is decided when the socket opens: closing the listener later does not turn it around."""
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    listener = inet("tcp", "0.0.0.0", 40000, None, 0, 1, "api")
    accepted = inet("tcp", "10.0.0.1", 40000, "203.0.113.5", 8000, 2, "api")
    store.apply(web, convert.scan(fleet.snapshot(1, at(0), [listener, accepted])))
    store.apply(web, convert.scan(fleet.delta(2, at(1), removed=[listener])))
    with engine.connect() as conn:
        [edge] = edges(conn, Window(at(2)))
    assert (edge["server_host"], edge["server_port"], edge["client_address"], edge["direction"]) == (
        "web-1",
        40000,
        "203.0.113.5",
        "listener",
    )
    assert edge["first_seen"] == at(0) and edge["last_seen"] == at(1)  # web-1's last scan before minute 2


def open_roles(engine: Engine) -> dict[int | None, str]:
    """Open flows by their local port (None where it is folded away): their role."""
    with engine.connect() as conn:
        return {
            row.local_port: row.role
            for row in conn.execute(
                select(flow_table.c.local_port, flow_table.c.role).where(flow_table.c.valid_to.is_(None))
            )
        }


def test_listeners_written_by_another_collector_decide_roles(engine: Engine) -> None:
    """Two collectors on one database take turns with one host: each sees the listeners the other wrote."""
    first, second = Store(engine), Store(engine)
    web = first.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    listener = inet("tcp", "0.0.0.0", 7000, None, 0, 1, "api")
    calls = [inet("tcp", "10.0.0.1", 7000, "203.0.113.5", 40001 + n, 10 + n, "api") for n in range(3)]
    assert first.apply(
        web, convert.scan(fleet.snapshot(1, at(0), [inet("tcp", "10.0.0.1", 40500, "10.0.0.9", 443, 2, "app")]))
    )
    assert second.apply(web, convert.scan(fleet.delta(2, at(1), added=[listener]))).acked
    assert first.apply(web, convert.scan(fleet.delta(3, at(2), added=[calls[0]]))).acked
    assert open_roles(engine)[7000] == connections.SERVED
    assert second.apply(web, convert.scan(fleet.delta(4, at(3), removed=[listener]))).acked
    assert first.apply(web, convert.scan(fleet.delta(5, at(4), added=[calls[1]], removed=[calls[0]]))).acked
    assert open_roles(engine)[7000] == connections.NOT_FOLDED  # no listener holds 7000 any more: both ports kept
    assert stored_flows(engine) == rebuilt(engine)[0]


def test_listeners_opened_and_closed_in_earlier_messages_decide_roles(engine: Engine) -> None:
    """One collector: a listener opened, then closed, by earlier messages of the host it keeps in mind."""
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    listener = inet("tcp", "0.0.0.0", 7000, None, 0, 1, "api")
    calls = [inet("tcp", "10.0.0.1", 7000, "203.0.113.5", 40001 + n, 10 + n, "api") for n in range(3)]
    store.apply(
        web, convert.scan(fleet.snapshot(1, at(0), [inet("tcp", "10.0.0.1", 40500, "10.0.0.9", 443, 2, "app")]))
    )
    store.apply(web, convert.scan(fleet.delta(2, at(1), added=[listener])))
    store.apply(web, convert.scan(fleet.delta(3, at(2), added=[calls[0]])))
    assert open_roles(engine)[7000] == connections.SERVED
    store.apply(web, convert.scan(fleet.delta(4, at(3), removed=[listener])))
    store.apply(web, convert.scan(fleet.delta(5, at(4), added=[calls[1]], removed=[calls[0]])))
    assert open_roles(engine)[7000] == connections.NOT_FOLDED
    store.apply(web, convert.scan(fleet.snapshot(6, at(5), [listener, calls[1]])))  # a snapshot opens it again
    store.apply(web, convert.scan(fleet.delta(7, at(6), added=[calls[2]], removed=[calls[1]])))
    assert open_roles(engine)[7000] == connections.SERVED
    assert stored_flows(engine) == rebuilt(engine)[0]


def test_a_host_s_listeners_are_read_once_while_the_collector_alone_writes_it(engine: Engine) -> None:
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=("10.0.0.1",))))
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "'UNCONN'" in statement:  # the store's query of a host's open listeners
            reads.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        store.apply(web, convert.scan(fleet.snapshot(1, at(0), [inet("tcp", "0.0.0.0", 7000, None, 0, 1, "api")])))
        for n in range(4):
            call = inet("tcp", "10.0.0.1", 7000, "203.0.113.5", 40001 + n, 10 + n, "api")
            assert store.apply(web, convert.scan(fleet.delta(2 + n, at(1 + n), added=[call]))).acked
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(reads) == 1
    assert open_roles(engine) == {7000: connections.SERVED}
