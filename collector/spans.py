"""Finding the socket rows alive at a moment among a long history: lifetime classes.

A week of a large fleet is a hundred million socket intervals, and "alive at T"
(``valid_from <= T < valid_to``) cannot be answered from an index on either end:
half the table began before T, and half ends after it.  So every closed row
carries its lifetime class, ``span``: the smallest c with
``valid_to - valid_from <= LIMITS[c]`` (the last class, ``UNBOUNDED``, has no
limit); open rows have none.  A row of class c alive at T began after
``T - LIMITS[c]``, so "alive at T" reads, for each class, one short range of the
index ``(span, valid_from, valid_to)``: about the rows alive at T and a few times
as many that began shortly before them, whatever the length of the history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, case, literal_column, or_

from sockfleet.collector.schema import sockets

# 1 min, 4 min, 16 min, ... 4**10 min (about two years): a row is read at most when it began
# within its class's limit before T, and its life is at least a quarter of that limit.
LIMITS = tuple(timedelta(minutes=4**k) for k in range(11))
UNBOUNDED = len(LIMITS)


def span_of(valid_from: datetime, valid_to: datetime | None) -> int | None:
    """The lifetime class of a row, None while it is open."""
    if valid_to is None:
        return None
    life = valid_to - valid_from
    for index, limit in enumerate(LIMITS):
        if life <= limit:
            return index
    return UNBOUNDED


def closing_span(table: Table = sockets) -> ColumnElement[int]:
    """The class of a row closed at the bound ``moment``: needs the parameters of ``cutoffs(moment)``."""
    return case(
        *((table.c.valid_from >= bindparam(f"span_cut{index}"), index) for index in range(len(LIMITS))), else_=UNBOUNDED
    )


def closing_span_at(moment: ColumnElement[datetime], table: Table = sockets) -> ColumnElement[int]:
    """The class of a row closed at ``moment``, a column of the statement (each row closing at a time of its own)."""
    life = moment - table.c.valid_from
    return case(
        *(
            (life <= literal_column(f"INTERVAL '{_minutes(limit)} minutes'"), literal_column(str(index)))
            for index, limit in enumerate(LIMITS)
        ),
        else_=literal_column(str(UNBOUNDED)),
    )


def _minutes(limit: timedelta) -> int:
    return int(limit.total_seconds()) // 60


def cutoffs(moment: datetime) -> dict[str, datetime]:
    """Parameters for ``closing_span``: a row closed at ``moment`` is of class c if it began at or after cut c."""
    return {f"span_cut{index}": moment - limit for index, limit in enumerate(LIMITS)}


def alive(
    start: datetime | None,
    end: datetime | None = None,
    table: Table = sockets,
    within: tuple[ColumnElement[bool], ...] = (),
) -> ColumnElement[bool]:
    """Rows alive at ``start`` (``end`` None), or at any time within [start, end]; open rows when start is None.

    ``within`` is repeated in every class's term, so that a partial index on those conditions serves each.
    """
    c = table.c
    if start is None:
        return and_(*within, c.valid_to.is_(None))
    end = end or start
    terms: list[Any] = [
        and_(*within, c.span == index, c.valid_from > start - limit, c.valid_from <= end, c.valid_to > start)
        for index, limit in enumerate(LIMITS)
    ]
    terms.append(and_(*within, c.span == UNBOUNDED, c.valid_from <= end, c.valid_to > start))
    # Open rows are the rows without a class (the store sets both together).
    terms.append(and_(*within, c.span.is_(None), c.valid_from <= end))
    return or_(*terms)
