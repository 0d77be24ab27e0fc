"""The last step of both ways to edges: one row per edge, client ports already folded away."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, null, select

# An edge row as both ways to edges and the Unix pairs give it: UNION needs one order of columns.
ORDER = (
    "proto",
    "client_ref",
    "client_address",
    "client_process",
    "server_ref",
    "server_address",
    "server_port",
    "server_process",
    "connections",
    "first_seen",
    "last_seen",
    "evidence",
)
KEPT = ("proto", "client_ref", "client_process", "server_ref", "server_process")  # grouped on, shown as they are


def edge_row(**columns: Any) -> Select[Any]:
    """A SELECT of an edge row's columns, in ``ORDER``."""
    return select(*(columns[name].label(name) for name in ORDER))


def fold(c: Any, connections: ColumnElement[Any], first_seen: Any, last_seen: Any) -> Select[Any]:
    """One row per (proto, client host and process, or outside client address, server host, port and process;
    an outside server by its address), from rows of views of connections with the columns ``proto``,
    ``client_ref``, ``c_addr``, ``client_process``, ``server_ref``, ``s_addr``, ``s_port``, ``server_process``
    and ``evidence``."""
    client_address = case((c.client_ref.is_(None), c.c_addr), else_=null())
    outside_server = case((c.server_ref.is_(None), c.s_addr), else_=null())
    kept = {name: c[name] for name in KEPT}
    measures = {"server_address": func.min(c.s_addr), "connections": connections, "first_seen": first_seen}
    row = edge_row(
        **kept,
        **measures,
        client_address=client_address,
        server_port=c.s_port,
        last_seen=last_seen,
        evidence=func.max(c.evidence),
    )
    return row.group_by(*kept.values(), client_address, outside_server, c.s_port)


def sided(served: ColumnElement[bool]) -> Any:
    """``side(server, client)``: the first value where the local end serves, else the second."""

    def side(server: Any, client: Any) -> ColumnElement[Any]:
        return case((served, server), else_=client)

    return side
