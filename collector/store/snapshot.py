"""A snapshot applied in one transaction: the host's open rows reconciled with what the snapshot lists.

Rows of sockets gone are closed; new sockets get rows; a changed state or owner closes the old row and
opens a new one.  Unchanged sockets are not written.  A large snapshot goes in steps instead
(``store.stepwise``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from sockfleet.collector import convert, spans
from sockfleet.collector.store.statements import OPEN_ROWS, Counts, chunks
from sockfleet.collector.store.writing import Listeners, Writer


def apply_snapshot(
    writer: Writer, conn: Connection, ref: int, listing: convert.Listing, moment: datetime, listening: Listeners | None
) -> tuple[Counts, Listeners | None]:
    """(added, removed, changed), and the host's open listeners after the snapshot when known."""
    held = {r[1]: (r[0], tuple(r[2:])) for r in conn.execute(OPEN_ROWS, {"ref": ref})}
    listed = listing.digests()
    opening = listing.opening(held, listed.items())
    changed_keys = {row.key for row in opening}
    closing = [row_id for key, (row_id, _) in held.items() if key not in listed or key in changed_keys]
    left: list[Row[Any]] = []
    for chunk in chunks(closing):
        params = {"ids": list(chunk), "moment": moment, **spans.cutoffs(moment)}
        left += writer.returning(conn, writer.close_ids, params)
    listening = writer.open_rows(conn, ref, opening, moment, left, listening)
    changed = sum(1 for row in opening if row.key in held)
    return (len(opening) - changed, len(closing) - changed, changed), listening
