"""The floor a collector is measured against: the least a server must do to take agents' messages.

    python -m tests.benchmarks.floor_collector --db URL [--listen 127.0.0.1:0]

A bare ``grpc.aio`` server speaking the collector's protocol (``sockfleet.v1.Collector``): it accepts a
hello, then for each snapshot or delta decodes the message, makes one row per socket listed or added
(the same columns as the collector's ``sockets`` rows, the key digested the same way), writes them with
one ``executemany`` of one INSERT (SQLite) or one ``COPY`` (PostgreSQL) in one transaction, and
acknowledges after the commit.  A message with no socket to write is acknowledged at once.

It keeps no history: nothing is closed, compared or checked, no flows, hosts or observations are
written.  Its rows go to its own table ``floor_sockets`` (the columns of ``sockets``, a primary key and
one index on ``(host_ref, key)``).  ``bench_collector`` runs the same load against it and against the
real collector in the same run, and reports each collector figure as a ratio to the floor's: machines
differ, ratios less so.

It prints ``listening on 127.0.0.1:PORT`` on stderr once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
import psycopg
from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text, create_engine
from sqlalchemy.engine import make_url

from sockfleet.collector import convert
from sockfleet.collector.store.statements import INSERT_COLUMNS
from sockfleet.v1 import fleet_pb2 as pb
from sockfleet.v1 import fleet_pb2_grpc as pb_grpc

CONNECTIONS = 8  # PostgreSQL connections, as many as the collector's worker threads
COLUMNS = ", ".join(f'"{name}"' for name in INSERT_COLUMNS)
INSERT = f"INSERT INTO floor_sockets ({COLUMNS}) VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"
COPY = f"COPY floor_sockets ({COLUMNS}) FROM STDIN"

metadata = MetaData()
floor_sockets = Table(
    "floor_sockets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_ref", Integer, nullable=False),
    Column("valid_from", DateTime, nullable=False),
    Column("key", String(32), nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("proto", String(8), nullable=False),
    Column("family", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("inode", BigInteger),
    Column("local_address", String(64)),
    Column("local_port", Integer),
    Column("remote_address", String(64)),
    Column("remote_port", Integer),
    Column("path", Text),
    Column("state", String(16), nullable=False),
    Column("peer_inode", BigInteger),
    Column("uid", BigInteger),
    Column("user", String(255)),
    Column("pid", Integer),
    Column("process", String(255)),
    Column("cmdline", Text),
    Column("owners", Integer, nullable=False),
    Column("rx_queue", BigInteger, nullable=False),
    Column("tx_queue", BigInteger, nullable=False),
    Column("flow", String(32)),
    Index("ix_floor_sockets_key", "host_ref", "key"),
)


def row(ref: int, moment: datetime | str, sock: pb.Socket) -> tuple[Any, ...]:
    """One socket's row in ``INSERT_COLUMNS`` order, unchecked."""
    key = sock.key
    return (
        ref,
        moment,
        convert.key_digest(key),
        key.netns,
        convert.PROTOS.get(key.proto),
        convert.FAMILIES.get(key.family),
        convert.TYPES.get(key.type),
        key.inode or None,
        key.local_address or None,
        key.local_port or None,
        key.remote_address or None,
        key.remote_port or None,
        key.path or None,
        convert.STATES.get(sock.state),
        sock.peer_inode or None,
        sock.uid if sock.HasField("uid") else None,
        sock.user or None,
        sock.pid if sock.HasField("pid") else None,
        sock.process or None,
        sock.cmdline or None,
        sock.owners,
        sock.rx_queue,
        sock.tx_queue,
        None,
    )


class Floor(pb_grpc.CollectorServicer):
    """Decode, write the rows in one bulk statement, commit, acknowledge."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.postgres = parsed.drivername.startswith("postgres")
        self.hosts: dict[str, int] = {}
        self.sqlite: sqlite3.Connection | None = None
        self.pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self.conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        if not self.postgres:
            self.sqlite = sqlite3.connect(parsed.database or ":memory:", isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL"):
                self.sqlite.execute(f"PRAGMA {pragma}")

    async def connect(self) -> None:
        for _ in range(CONNECTIONS if self.postgres else 0):
            self.pool.put_nowait(await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True))

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.sqlite is not None:  # in the event loop's thread, as the collector applies SQLite's messages
            self.sqlite.execute("BEGIN")
            self.sqlite.executemany(INSERT, rows)
            self.sqlite.execute("COMMIT")
            return
        conn = await self.pool.get()
        try:
            async with conn.cursor() as cursor, cursor.copy(COPY) as copy:  # one COPY is one transaction
                for value in rows:
                    await copy.write_row(value)
        finally:
            self.pool.put_nowait(conn)

    async def Stream(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CollectorMessage]:
        ref = 0
        async for message in request_iterator:
            body = message.WhichOneof("body")
            if body == "hello":
                ref = self.hosts.setdefault(message.hello.host_id, len(self.hosts) + 1)
                continue
            payload = getattr(message, body)
            taken = convert.utc(payload.taken_at_us)
            moment = taken if self.postgres else taken.isoformat(" ", timespec="microseconds")
            listed = payload.sockets if body == "snapshot" else [*payload.added, *payload.changed]
            await self.write([row(ref, moment, sock) for sock in listed])
            yield pb.CollectorMessage(ack=pb.Ack(epoch=payload.epoch, seq=payload.seq))


async def serve(url: str, listen: str) -> None:
    floor = Floor(url)
    await floor.connect()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    pb_grpc.add_CollectorServicer_to_server(floor, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await server.stop(1)
    while not floor.pool.empty():
        await floor.pool.get_nowait().close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db", required=True, help="SQLAlchemy URL of the database (sqlite:///... or postgresql://...)"
    )
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    engine = create_engine(args.db)
    metadata.create_all(engine)
    engine.dispose()
    asyncio.run(serve(args.db, args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
