"""How the long-running commands (``agent run``, ``collector serve``) log: standard ``logging`` to standard
error, as text lines or as one JSON object a line (``--log-format json``), for journald, Loki and the like.

A JSON line holds the record's time (RFC 3339, UTC), level, logger and message, then every field passed
as ``extra``::

    log.info("host %s connected", name, extra={"host": name, "address": peer, "agent_version": version})
    {"time": "2026-12-02T13:40:00.123Z", "level": "info", "logger": "sockfleet.collector",
     "message": "host web-1 connected", "host": "web-1", "address": "ipv4:10.0.0.5:40112",
     "agent_version": "0.1.0"}

No secret is ever passed to a log: a database URL is logged as ``db.shown`` writes it (no password), and
an agent's token never leaves the code that puts it in the stream's metadata.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(name)s: %(message)s"
# What every LogRecord holds; anything else on a record came from ``extra``.
# uvicorn adds ``color_message``, the message again with terminal colours: not for a log file.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ``extra`` fields, and a traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def rfc3339(moment: float) -> str:
    """Seconds since the epoch as RFC 3339 in UTC, to the millisecond: ``2026-12-02T13:40:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"


class _Handler(logging.StreamHandler[TextIO]):
    """The handler ``setup`` installs, told apart from handlers others installed."""


def setup(level: str, fmt: str = "text", stream: TextIO | None = None) -> logging.Handler | None:
    """Send every record at ``level`` or above (``debug``, ``info``, ``warning``, ``error``) to standard error
    (or ``stream``) in ``fmt`` (``text`` or ``json``); the handler, or None.

    Like ``logging.basicConfig``, a root logger that others gave handlers (a program that embeds sockfleet,
    a test runner) is left as it is, unless ``stream`` is given; a handler of an earlier ``setup`` is replaced.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--log-format: {fmt!r} is not one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for old in [handler for handler in root.handlers if isinstance(handler, _Handler)]:
        root.removeHandler(old)
    if stream is None and root.handlers:
        return None
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
