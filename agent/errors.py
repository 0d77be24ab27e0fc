"""The agent's exceptions.

::

    AgentError                  anything the agent reports as one clear line
    ├── UsageError              a bad command-line value (exit status 2)
    └── SourceError             a socket source failed; names the source
        └── ParseError          a source's input was truncated or malformed

Foreign exceptions (``OSError`` from netlink or ``/proc``, ``struct.error``)
are translated into these once, where they happen, with ``raise ... from``.
"""

from __future__ import annotations


class AgentError(Exception):
    """An error the CLI prints as one line, without a traceback."""

    exit_status = 1


class UsageError(AgentError):
    exit_status = 2


class SourceError(AgentError):
    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class ParseError(SourceError):
    pass
