"""Command-line inputs: whatever a user types, a value or one clear line (UsageError), never a traceback."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from hypothesis import given
from hypothesis import strategies as st

from sockfleet.collector.audit import load_policy
from sockfleet.collector.errors import UsageError
from sockfleet.collector.times import parse_duration, parse_time

T = TypeVar("T")
TIMEISH = (
    st.text(max_size=40)
    | st.from_regex(r"-?\d{1,12}(ms|s|m|h|d|w|x)?", fullmatch=True)
    | st.from_regex(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?", fullmatch=True)
)


def outcome(function: Callable[[str], T], text: str) -> tuple[T | None, str | None]:
    """The value, or the one-line message of the UsageError; any other exception fails the test."""
    try:
        return function(text), None
    except UsageError as exc:
        return None, str(exc)


@given(TIMEISH)
def test_times(text: str) -> None:
    moment, message = outcome(parse_time, text)
    if message is None:
        assert isinstance(moment, datetime)
        assert moment.tzinfo is None
    else:
        assert "\n" not in message
        assert message.startswith("--at")


@given(TIMEISH)
def test_durations(text: str) -> None:
    seconds, message = outcome(parse_duration, text)
    assert (seconds is not None and seconds > 0) or (message is not None and "\n" not in message)


@given(st.text(max_size=200))
def test_policy_files(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.toml"
        path.write_text(text, encoding="utf-8")
        rules, message = outcome(load_policy, str(path))
    assert isinstance(rules, list) or (message is not None and "\n" not in message)
