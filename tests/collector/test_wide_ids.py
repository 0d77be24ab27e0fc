"""Row ids past 32 bits: a long-lived fleet draws billions of history ids, and ids are never reused.

At 1,000 hosts with 2% of their connections changing every 30 s, ``flows`` draws about 400 ids a second: a
32-bit id would run out within two months.  Here every history table's ids are moved past 2^32 (on PostgreSQL
its sequence too), and the store and the questions go on working with the ids that follow.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select, text

from sockfleet.collector import convert, queries, talks
from sockfleet.collector.schema import closed_flows, flows, observations, sockets
from sockfleet.collector.store import Store
from tests.collector import fleet
from tests.collector.fleet import at, inet

PAST_32_BITS = 2**32
HISTORY = (sockets, flows, observations, closed_flows)


def _move_ids_past_32_bits(engine: Engine) -> None:
    """Every history row's id moves up by 2^32; the next id drawn follows the largest."""
    with engine.begin() as conn:
        for table in HISTORY:
            conn.execute(table.update().values(id=table.c.id + PAST_32_BITS))
            if engine.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT setval(pg_get_serial_sequence(:t, 'id'), (SELECT max(id) FROM " + table.name + "))"),
                    {"t": table.name},
                )


def test_history_goes_on_past_32_bit_ids(engine: Engine) -> None:
    store = Store(engine)
    web = store.hello(convert.greeting(fleet.hello("web-1")))
    listener = inet("tcp", "0.0.0.0", 80, None, 0, 1, "nginx")
    calls = [inet("tcp", "10.0.0.1", 40000 + k, "10.0.0.2", 5432, 100 + k, "app") for k in range(4)]
    assert store.apply(web, convert.scan(fleet.snapshot(1, at(0), [listener, *calls]))).acked
    first = fleet.delta(2, at(1), removed=calls[:1])
    first.closed.CopyFrom(fleet.closed_calls(at(1), 3, 3, 100, 300))
    assert store.apply(web, convert.scan(first)).acked

    _move_ids_past_32_bits(engine)

    # Closing rows by id (as one array on PostgreSQL), opening new ones with ids from the sequence.
    more = [inet("tcp", "10.0.0.1", 41000 + k, "10.0.0.3", 6379, 200 + k, "app") for k in range(3)]
    later = fleet.delta(3, at(2), added=more, removed=calls[1:3])
    later.closed.CopyFrom(fleet.closed_calls(at(2), 3, 3, 100, 300))
    assert store.apply(web, convert.scan(later)).acked
    assert store.apply(web, convert.scan(fleet.delta(4, at(3), removed=[listener, more[0]]))).acked

    with engine.connect() as conn:
        for table in HISTORY:
            assert conn.execute(select(func.min(table.c.id))).scalar_one() > PAST_32_BITS, table.name
        open_keys = conn.execute(
            select(sockets.c.key, func.count()).where(sockets.c.valid_to.is_(None)).group_by(sockets.c.key)
        ).all()
        assert len(open_keys) == 3 and all(n == 1 for _, n in open_keys)  # calls[3], more[1], more[2]
        listening = queries.sockets_at(conn, at(2.5), queries.Filters(), only_listening=True)
        assert [(r["host"], r["local_port"]) for r in listening] == [("web-1", 80)]
        assert queries.sockets_at(conn, at(3.5), queries.Filters(), only_listening=True) == []
        found = talks.edges(conn, talks.Window(at(2.5)))
    assert {(e.server_address, e.server_port, e.connections) for e in found} >= {
        ("10.0.0.2", 5432, 1),
        ("10.0.0.3", 6379, 3),
    }


def test_history_keys_hold_the_host(engine: Engine) -> None:
    """Every history table's primary key (where it has one) holds ``host_ref``, and its ids are 64 bits."""
    if engine.dialect.name != "postgresql":  # SQLite: integer primary keys are 64-bit rowids, keys stay as made
        assert engine.dialect.name == "sqlite"
        return
    with engine.connect() as conn:
        for table in ("observations", "closed_flows"):
            key = conn.execute(
                text(
                    "SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_constraint c "
                    "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
                    "WHERE c.conrelid = CAST(:t AS regclass) AND c.contype = 'p'"
                ),
                {"t": table},
            ).scalar_one()
            assert "host_ref" in key and "id" in key, (table, key)
        kinds = conn.execute(
            text("SELECT sequencename, data_type::text FROM pg_sequences WHERE sequencename = ANY(:names)"),
            {"names": [f"{t.name}_id_seq" for t in HISTORY]},
        ).all()
        assert sorted(kinds) == sorted((f"{t.name}_id_seq", "bigint") for t in HISTORY)
