"""The collector's exceptions.

::

    CollectorError              one clear line on the CLI, exit status 1
    ├── UsageError              a bad command-line value (exit status 2)
    └── RejectedMessage         an agent's message refused; carries the gRPC status
"""

from __future__ import annotations


class CollectorError(Exception):
    exit_status = 1


class UsageError(CollectorError):
    exit_status = 2


class RejectedMessage(CollectorError):
    """A message that is not stored; ``code`` is the gRPC status the agent receives."""

    def __init__(
        self, message: str, code: str = "INVALID_ARGUMENT", metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.code = code  # the name of a grpc.StatusCode: gRPC itself is loaded only by the server
        self.metadata = metadata  # trailing metadata that tells the agent what to do (see collector.server)
