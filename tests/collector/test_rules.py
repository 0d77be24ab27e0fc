"""Each connection rule's Python predicate and SQL expression answer alike, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import Boolean, Engine, Integer, String, cast, literal, null, select, union_all

from sockfleet import connections
from sockfleet.collector import rules

ADDRESSES = [
    None,
    "127.0.0.1",
    "127.8.8.8",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.5",
    "10.0.0.5",
    "0.0.0.0",
    "::",
    "fe80::1",
    "::ffff:0.0.0.0",
    "1270::1",
]
PROTOS = ["tcp", "udp", "unix"]
STATES = ["LISTEN", "UNCONN", "ESTABLISHED", "TIME_WAIT", "CLOSE", "SYN_SENT"]
PORTS = [0, 22, 443, 32767, 32768, 45000, 60999, 61000, 65535]


def table(rows: list[tuple[Any, ...]], **types: Any) -> Any:
    """The rows as a subquery with these columns (a UNION of one-row SELECTs: SQLite names no VALUES columns)."""
    selects = [
        select(
            *(
                cast(literal(value, kind), kind).label(name) if value is not None else cast(null(), kind).label(name)
                for value, (name, kind) in zip(row, types.items(), strict=True)
            )
        )
        for row in rows
    ]
    return union_all(*selects).subquery("v")


def answers(engine: Engine, expression: Any, source: Any) -> list[Any]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(select(expression).select_from(source))]  # in the rows' order


def test_addresses(engine: Engine) -> None:
    rows = [(proto, address) for proto in PROTOS for address in ADDRESSES]
    v = table(rows, proto=String, local_address=String)
    assert answers(engine, rules.plain_sql(v.c.local_address), v) == [connections.plain(a) for _, a in rows]
    loop = answers(engine, rules.loopback_sql(rules.plain_sql(v.c.local_address)), v)
    assert [bool(x) for x in loop] == [a is not None and rules.loopback(a) for _, a in rows]
    assert [bool(x) for x in answers(engine, rules.exposed_sql(v.c), v)] == [rules.exposed(p, a) for p, a in rows]


def test_ports(engine: Engine) -> None:
    v = table([(port,) for port in PORTS], port=Integer)
    assert answers(engine, rules.ephemeral_sql(v.c.port), v) == [int(connections.ephemeral(p)) for p in PORTS]


def test_kinds_of_socket(engine: Engine) -> None:
    rows = [
        (proto, state, kind, path, remote)
        for proto, state, kind, path, remote in itertools.product(
            PROTOS, STATES, ["stream", "dgram"], [None, "/run/x.sock"], [None, "10.0.0.9"]
        )
    ]
    v = table(rows, proto=String, state=String, type=String, path=String, remote_address=String)
    assert [bool(x) for x in answers(engine, rules.accepts_sql(v.c), v)] == [rules.accepts(p, s) for p, s, *_ in rows]
    assert [bool(x) for x in answers(engine, rules.listening_sql(v.c), v)] == [
        rules.listening(p, s, k, path) for p, s, k, path, _ in rows
    ]
    assert [bool(x) for x in answers(engine, rules.connected_sql(v.c), v)] == [
        rules.connected(p, s, r) for p, s, _, _, r in rows
    ]


def test_server_side(engine: Engine) -> None:
    rows = [(a, b, p, q) for a, b in itertools.product([False, True], repeat=2) for p in PORTS for q in PORTS]
    v = table(rows, local_listens=Boolean, remote_listens=Boolean, local_port=Integer, remote_port=Integer)
    side, how = rules.serving_sql(
        v.c.local_listens == literal(True), v.c.remote_listens == literal(True), v.c.local_port, v.c.remote_port
    )
    with engine.connect() as conn:
        found = [(bool(s), h) for s, h in conn.execute(select(side, how).select_from(v))]
    assert found == [rules.serving(*row) for row in rows]
