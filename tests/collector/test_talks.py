"""Who talks to whom, on SQLite and PostgreSQL: direction by evidence, folding, external endpoints, Unix pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine

from sockfleet.collector import convert, output
from sockfleet.collector.store import Store
from sockfleet.collector.talks import Window, edges
from tests.collector import fleet
from tests.collector.fleet import at, inet, unix

WEB, APP1, APP2 = "10.0.0.1", "10.0.0.2", "10.0.0.3"


@pytest.fixture
def fleet_store(engine: Engine) -> Store:
    """web-1 serves HTTP, DNS and (on loopback) redis; app-1 and app-2 call it; outsiders call in and out."""
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=(WEB,))))
    app1 = store.hello(convert.greeting(fleet.hello("app-1", addresses=(APP1,))))
    app2 = store.hello(convert.greeting(fleet.hello("app-2", addresses=(APP2,))))
    store.apply(
        web,
        convert.scan(
            fleet.snapshot(
                1,
                at(0),
                [
                    inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"),
                    inet("tcp", WEB, 80, APP1, 40001, 2, "nginx"),
                    inet("tcp", WEB, 80, APP1, 40002, 3, "nginx"),
                    inet("tcp", WEB, 80, APP2, 40003, 4, "nginx"),
                    inet("tcp", WEB, 80, "203.0.113.5", 51000, 5, "nginx"),
                    inet("udp", "0.0.0.0", 53, None, 0, 6, "dnsd"),
                    inet("tcp", "127.0.0.1", 6379, None, 0, 7, "redis"),
                    inet("tcp", "127.0.0.1", 6379, "127.0.0.1", 45000, 8, "redis"),
                    inet("tcp", "127.0.0.1", 45000, "127.0.0.1", 6379, 9, "worker"),
                    unix("/run/app.sock", 10, 11, "app", pid=2001),
                    unix(None, 11, 10, "worker", pid=2002),
                ],
            )
        ),
    )
    store.apply(
        app1,
        convert.scan(
            fleet.snapshot(
                1,
                at(0),
                [
                    inet("tcp", APP1, 40001, WEB, 80, 21, "curl"),
                    inet("tcp", APP1, 40002, WEB, 80, 22, "curl"),
                    inet("tcp", APP1, 40100, "93.184.216.34", 443, 23, "curl"),
                    inet("udp", APP1, 41000, WEB, 53, 24, "dig"),
                ],
            )
        ),
    )
    store.apply(app2, convert.scan(fleet.snapshot(1, at(0), [inet("tcp", APP2, 40003, WEB, 80, 31, "wget")])))
    return store


def brief(rows: Sequence[Any]) -> set[tuple[Any, ...]]:
    return {
        (
            r["proto"],
            r["client_host"] or r["client_address"],
            r["client_process"],
            r["server_host"] or r["server_address"],
            r["server_port"],
            r["server_process"],
            r["connections"],
            r["direction"],
        )
        for r in rows
    }


def test_edges_across_hosts(fleet_store: Store, engine: Engine) -> None:
    with engine.connect() as conn:
        rows = edges(conn, Window(at(1)))
    assert brief(rows) == {
        ("tcp", "app-1", "curl", "web-1", 80, "nginx", 2, "listener"),
        ("tcp", "app-2", "wget", "web-1", 80, "nginx", 1, "listener"),
        ("tcp", "203.0.113.5", None, "web-1", 80, "nginx", 1, "listener"),
        ("tcp", "app-1", "curl", "93.184.216.34", 443, None, 1, "ephemeral port"),
        ("udp", "app-1", "dig", "web-1", 53, "dnsd", 1, "listener"),
        ("tcp", "web-1", "worker", "web-1", 6379, "redis", 1, "listener"),
        ("unix", "web-1", "worker", "web-1", None, "app", 1, "unix path"),
    }
    external = next(r for r in rows if r["server_host"] is None)
    assert external["server_address"] == "93.184.216.34"
    unix_edge = next(r for r in rows if r["proto"] == "unix")
    assert unix_edge["server_address"] == "/run/app.sock"
    assert all(r["first_seen"] == at(0) for r in rows)


def test_edges_change_with_time(fleet_store: Store, engine: Engine) -> None:
    with engine.connect() as conn:
        web = conn.exec_driver_sql("SELECT id FROM hosts WHERE name = 'web-1'").scalar_one()
    # app-2's connection ends at minute 2: gone from the picture at minute 3, still there at minute 1.
    app2 = fleet_store.hello(convert.greeting(fleet.hello("app-2", addresses=(APP2,))))
    fleet_store.apply(
        app2, convert.scan(fleet.delta(2, at(2), removed=[inet("tcp", APP2, 40003, WEB, 80, 31, "wget")]))
    )
    fleet_store.apply(web, convert.scan(fleet.delta(2, at(2), removed=[inet("tcp", WEB, 80, APP2, 40003, 4, "nginx")])))
    with engine.connect() as conn:
        before, after = edges(conn, Window(at(1))), edges(conn, Window(at(3)))
        during = edges(conn, Window(at(0), at(3)))
    assert ("tcp", "app-2", "wget", "web-1", 80, "nginx", 1, "listener") in brief(before)
    assert not [r for r in after if r["client_host"] == "app-2"]
    [gone] = [r for r in during if r["client_host"] == "app-2"]
    assert gone["last_seen"] == at(2)


def test_a_window_keeps_hosts_that_went_silent_within_it(fleet_store: Store, engine: Engine) -> None:
    """Every host last reported at minute 0 (every minute, so known until minute 3): a window that
    reaches past that still shows their connections; one that starts later knows none of them."""
    with engine.connect() as conn:
        early = edges(conn, Window(at(0), at(1)))
        reaching = edges(conn, Window(at(1), at(30)))
        late = edges(conn, Window(at(10), at(30)))
    assert len(early) == 7 and brief(reaching) == brief(early)
    assert {r["last_seen"] for r in reaching} == {at(0)}  # their last scan, not the end of the window
    assert late == []


def test_heuristic_without_listeners(engine: Engine) -> None:
    store = Store(engine)
    lone = store.hello(convert.greeting(fleet.hello("lone", addresses=("10.0.0.9",))))
    store.apply(
        lone,
        convert.scan(
            fleet.snapshot(
                1,
                at(0),
                [
                    inet(
                        "tcp", "10.0.0.9", 5000, "198.51.100.7", 6000, 1, "peer"
                    ),  # neither ephemeral: the lower port serves
                    inet("tcp", "10.0.0.9", 8443, "198.51.100.8", 50000, 2, "api"),  # the remote port is ephemeral
                ],
            )
        ),
    )
    with engine.connect() as conn:
        rows = brief(edges(conn, Window(at(1))))
    assert rows == {
        ("tcp", "198.51.100.7", None, "lone", 5000, "peer", 1, "lower port"),
        ("tcp", "198.51.100.8", None, "lone", 8443, "api", 1, "ephemeral port"),
    }


def test_socketpair_inside_one_process_is_not_an_edge(engine: Engine) -> None:
    store = Store(engine)
    host = store.hello(convert.greeting(fleet.hello("solo")))
    store.apply(
        host,
        convert.scan(
            fleet.snapshot(
                1,
                at(0),
                [
                    unix(None, 1, 2, "loop", pid=7),
                    unix(None, 2, 1, "loop", pid=7),
                    unix(None, 3, 4, "parent", pid=8),
                    unix(None, 4, 3, "child", pid=9),
                ],
            )
        ),
    )
    with engine.connect() as conn:
        assert brief(edges(conn, Window(at(1)))) == {("unix", "solo", "child", "solo", None, "parent", 1, "unix pair")}
        view = [dict(r._mapping) for r in conn.exec_driver_sql("SELECT * FROM edges")]
        assert brief(view) == brief(edges(conn, Window(None)))


def test_edges_view_agrees_with_talks(fleet_store: Store, engine: Engine) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM edges"))]
        now = edges(conn, Window(None))
    assert brief(rows) == brief(now)
    assert len(rows) == len(now) == 7


def test_window_keeps_the_process_of_a_connection_that_lingered(engine: Engine) -> None:
    """A client exits: its socket lingers in FIN_WAIT2 without an owner before it goes."""
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1", addresses=(WEB,))))
    app = store.hello(convert.greeting(fleet.hello("app-1", addresses=(APP1,))))
    store.apply(
        web,
        convert.scan(
            fleet.snapshot(
                1,
                at(0),
                [inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx"), inet("tcp", WEB, 80, APP1, 40001, 2, "nginx")],
            )
        ),
    )
    client = inet("tcp", APP1, 40001, WEB, 80, 21, "curl")
    store.apply(app, convert.scan(fleet.snapshot(1, at(0), [client])))
    orphan = inet("tcp", APP1, 40001, WEB, 80, 0, "", state=5)  # FIN_WAIT2, inode 0, no process
    orphan.ClearField("pid")
    store.apply(app, convert.scan(fleet.delta(2, at(1), added=[orphan], removed=[client])))
    store.apply(app, convert.scan(fleet.delta(3, at(2), removed=[orphan])))
    store.apply(web, convert.scan(fleet.delta(2, at(2), removed=[inet("tcp", WEB, 80, APP1, 40001, 2, "nginx")])))
    with engine.connect() as conn:
        rows = brief(edges(conn, Window(at(0), at(3))))
    assert rows == {("tcp", "app-1", "curl", "web-1", 80, "nginx", 1, "listener")}


def test_asking_for_one_host_or_port_reads_less_and_answers_the_same(fleet_store: Store, engine: Engine) -> None:
    """`talks --host` and `--port` narrow the sockets read; the edges are those of the whole picture."""
    with engine.connect() as conn:
        everything = edges(conn, Window(at(1)))
        for host in ("web-1", "app-1", "app-2"):
            expected = [r for r in everything if host in (r["client_host"], r["server_host"])]
            assert edges(conn, Window(at(1)), host=host) == expected, host
            assert expected
        for port in (80, 53, 443, 6379, 8080):
            expected = [r for r in everything if r["server_port"] == port]
            assert edges(conn, Window(at(1)), port=port) == expected, port
        assert len(edges(conn, Window(at(1)), host="web-1", port=80)) == 3
        assert edges(conn, Window(at(1)), host="nobody") == []


def test_dot_labels_each_edge_by_port_or_path() -> None:
    def edge(
        proto: str,
        client: tuple[str | None, str | None, str | None],
        server: tuple[str | None, ...],
        port: int | None,
        count: int,
    ) -> dict[str, Any]:
        return {
            "proto": proto,
            "client_host": client[0],
            "client_address": client[1],
            "client_process": client[2],
            "server_host": server[0],
            "server_address": server[1],
            "server_process": server[2],
            "server_port": port,
            "connections": count,
        }

    graph = output.dot(
        [
            edge("tcp", ("app-1", None, "curl"), ("web-1", WEB, "nginx"), 80, 2),
            edge("tcp", (None, "203.0.113.5", None), ("web-1", WEB, "nginx"), 80, 1),
            edge("unix", ("web-1", None, "php"), ("web-1", "/run/php.sock", "php-fpm"), None, 3),
            edge("unix", ("web-1", None, None), ("web-1", None, None), None, 1),
        ]
    )
    assert '"app-1/curl" -> "web-1/nginx" [label="tcp/80 x2"];' in graph
    assert '"203.0.113.5" -> "web-1/nginx" [label="tcp/80 x1"];' in graph
    assert '"203.0.113.5" [shape=ellipse, style=dashed];' in graph
    assert '"web-1/php" -> "web-1/php-fpm" [label="unix /run/php.sock x3"];' in graph
    assert '"web-1/?" -> "web-1/?" [label="unix x1"];' in graph
    assert graph.count("subgraph cluster_") == 2 and graph.endswith("}\n")
