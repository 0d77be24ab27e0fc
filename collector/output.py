"""Rows as a table for people, JSON (one array) or CSV; field names are the SQL views' column names.

Tables, CSV and Graphviz text show control characters written out (``\x1b``), so that a process
named with escape sequences cannot act on the terminal that prints it; JSON keeps every value exact.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

from sockfleet.collector.times import rfc3339
from sockfleet.commandline import printable

FORMATS = ("table", "json", "csv")


def _plain(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else value


def _shown(value: Any) -> Any:
    """A value as a table or CSV shows it: times in RFC 3339, text with control characters written out."""
    if isinstance(value, str):
        return printable(value)
    return _plain(value)


def write(
    rows: Sequence[dict[str, Any]],
    fields: Sequence[str],
    out: IO[str],
    fmt: str,
    table_fields: Sequence[str] | None = None,
) -> None:
    if fmt == "json":
        json.dump([{f: _plain(row.get(f)) for f in fields} for row in rows], out, ensure_ascii=False)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([["" if row.get(f) is None else _shown(row.get(f)) for f in fields] for row in rows])
    else:
        columns = list(table_fields or fields)
        cells = [[str(_shown(row.get(f))) if row.get(f) is not None else "" for f in columns] for row in rows]
        header = [c.upper() for c in columns]
        widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(header)]
        for line in [header, *cells]:
            out.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n")


def endpoint(row: dict[str, Any]) -> str:
    """A socket's local side for the table: ``"[::1]:80"``, ``"0.0.0.0:22"`` or a Unix path."""
    if row["proto"] == "unix":
        return str(row.get("path") or "*")
    address = row.get("local_address") or "*"
    return f"[{address}]:{row['local_port']}" if ":" in address else f"{address}:{row['local_port']}"


def service(edge: dict[str, Any]) -> str:
    """What an edge's server offers: ``tcp/443``, a Unix path (``unix /run/app.sock``), or for a Unix pair
    bound to no path the protocol alone."""
    if edge["server_port"] is not None:
        return f"{edge['proto']}/{edge['server_port']}"
    return " ".join(part for part in (edge["proto"], edge["server_address"]) if part)


def dot(rows: list[dict[str, Any]]) -> str:
    """Graphviz: a cluster per host, a node per process, an edge per fleet edge labelled port and count."""

    def quote(text: str) -> str:
        return '"' + printable(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    clusters: dict[str, set[str]] = {}
    external: set[str] = set()
    lines = ["digraph sockfleet {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    links = []
    for row in rows:
        ends = []
        for side in ("client", "server"):
            host, process = row[f"{side}_host"], row[f"{side}_process"] or "?"
            if host is None:
                node = row[f"{side}_address"] or "?"
                external.add(node)
            else:
                node = f"{host}/{process}"
                clusters.setdefault(host, set()).add(process)
            ends.append(node)
        label = quote(_label(row))
        links.append(f"  {quote(ends[0])} -> {quote(ends[1])} [label={label}];")
    for index, (host, processes) in enumerate(sorted(clusters.items())):
        lines.append(f"  subgraph cluster_{index} {{ label={quote(host)};")
        lines += [f"    {quote(f'{host}/{p}')} [label={quote(p)}];" for p in sorted(processes)]
        lines.append("  }")
    lines += [f"  {quote(node)} [shape=ellipse, style=dashed];" for node in sorted(external)]
    return "\n".join([*lines, *links, "}"]) + "\n"


def _label(row: dict[str, Any]) -> str:
    """An edge's label: its service and connections, then short-lived ones and bytes where known."""
    label = f"{service(row)} x{row['connections']}"
    if row.get("short_lived"):
        label += f" ({row['short_lived']} short-lived)"
    if row.get("client_bytes") is not None and row.get("server_bytes") is not None:
        label += f", {row['client_bytes']:,} B up, {row['server_bytes']:,} B down"
    return label
