"""A delta applied in one transaction.  It must follow the message the collector applied last for the host
(checked by the store), and every socket it removes or changes must be open there; otherwise the agent is
asked for a full snapshot."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from sockfleet.collector import convert, spans
from sockfleet.collector.store.statements import Counts, chunks
from sockfleet.collector.store.writing import Listeners, Resync, Writer


def apply_delta(
    writer: Writer, conn: Connection, ref: int, changes: convert.Changes, moment: datetime, listening: Listeners | None
) -> tuple[Counts, Listeners | None]:
    """(added, removed, changed), and the host's open listeners after the delta when known."""
    closing = changes.removed + [row.key for row in changes.changed]
    left: list[Row[Any]] = []
    for chunk in chunks(closing):
        params = {"ref": ref, "keys": list(chunk), "moment": moment, **spans.cutoffs(moment)}
        left += writer.returning(conn, writer.close_keys, params)
    if len(left) != len(closing):
        raise Resync("delta removes or changes a socket the collector does not hold")
    listening = writer.open_rows(conn, ref, changes.added + changes.changed, moment, left, listening)
    return (len(changes.added), len(changes.removed), len(changes.changed)), listening
