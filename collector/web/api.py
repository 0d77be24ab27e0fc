"""``/api/v1/<question>``: the command line's own question, asked with the request's parameters.

A request is turned into the command line it stands for (``/api/v1/ports?at=-15m&exposed=1`` is
``sockfleet ports --at=-15m --exposed --format json``), parsed by the command line's parser and
answered by the command line's handler, so that the body is exactly the CLI's JSON and a mistake is
the CLI's one-line message (HTTP 400).  The database and the audit policy are the server's.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from sockfleet.collector import db, queries
from sockfleet.collector.cli import handler
from sockfleet.collector.errors import CollectorError, UsageError
from sockfleet.collector.parser import build_parser
from sockfleet.collector.times import now, rfc3339
from sockfleet.commandline import CommandLineError, RaisingParser, one_line

QUESTIONS = ("hosts", "sockets", "ports", "talks", "history", "diff", "audit")
SERVER_SET = frozenset(("db", "format", "policy", "debug", "help"))  # the server's, not a request's
_TRUE, _FALSE = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")
_PARSER = build_parser(RaisingParser)


@dataclass(frozen=True)
class Reply:
    """An answer: HTTP status, JSON body, and what the CLI would say on standard error and exit with."""

    status: int
    body: str
    notes: str = ""
    exit_status: int = 0


def _switches(question: str) -> frozenset[str]:
    commands = next(a for a in _PARSER._actions if isinstance(a, argparse._SubParsersAction))
    chosen = commands.choices[question]
    return frozenset(flag for action in chosen._actions if action.nargs == 0 for flag in action.option_strings)


SWITCHES = {question: _switches(question) for question in QUESTIONS}


def command_line(question: str, params: list[tuple[str, str]]) -> list[str]:
    """``("ports", [("at", "-15m"), ("exposed", "1")])`` →
    ``["ports", "--at=-15m", "--exposed", "--format", "json"]``."""
    argv = [question]
    for key, value in params:
        if key in SERVER_SET:
            raise CommandLineError(f"{key}: set by the server, not by a request")
        flag = f"--{key}"
        if flag in SWITCHES[question]:
            if value.strip().lower() in _TRUE:
                argv.append(flag)
            elif value.strip().lower() not in _FALSE:
                raise CommandLineError(f"{flag}: {value!r} is not a switch (1, true, yes, on; 0, false, no, off)")
        else:
            argv.append(f"{flag}={value}")
    return [*argv, "--format", "json"]


def answer(question: str, params: list[tuple[str, str]], engine: Engine, policy: str | None) -> Reply:
    """The CLI's JSON for ``question`` asked with ``params``, or its one-line error."""
    try:
        args = _PARSER.parse(command_line(question, params))
        args.db, args.policy = engine, policy
        out, err = io.StringIO(), io.StringIO()
        status = handler(args)(args, out, err)
    except (CommandLineError, UsageError) as exc:
        return Reply(400, _error(one_line(exc)))
    except DBAPIError as exc:
        return Reply(503, _error(f"database error: {db.reason(exc)}"))
    except CollectorError as exc:
        return Reply(500, _error(one_line(exc)))
    return Reply(200, out.getvalue(), " ".join(err.getvalue().split()), status)


def recorded(engine: Engine) -> Reply:
    """``/api/v1/range``: the first and last moment the database holds, and the server's now."""
    try:
        with engine.connect() as conn:
            first, last = queries.recorded(conn)
    except DBAPIError as exc:
        return Reply(503, _error(f"database error: {db.reason(exc)}"))
    moments = {"first": first and rfc3339(first), "last": last and rfc3339(last), "now": rfc3339(now())}
    return Reply(200, json.dumps(moments))


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)
