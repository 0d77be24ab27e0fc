"""The collector side of ``sockfleet``: every command that is not the agent's, parsed (``collector.parser``) and
handed to the module of its group (``collector.commands``).

A mistake on the command line, a time out of range, a database that cannot be reached or is not
sockfleet's: one line on standard error and exit status 2.  Any other known failure: one line and
exit status 1.  A traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from sockfleet import logs
from sockfleet.collector import db
from sockfleet.collector.errors import CollectorError
from sockfleet.collector.parser import build_parser
from sockfleet.commandline import fail

TIME_OPTIONS = ("--at", "--since", "--until", "--from", "--to")


def join_relative_times(argv: list[str]) -> list[str]:
    """``--at -15m`` → ``--at=-15m``: argparse would take ``-15m`` for an option."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in TIME_OPTIONS and arg.startswith("-") and arg[1:2].isdigit():
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def handler(args: argparse.Namespace) -> Callable[..., int]:
    """The command's function; only its own group's module is loaded (gRPC, for instance, only to serve)."""
    if args.command == "collector":
        if args.action == "serve":
            from sockfleet.collector.commands import serve

            return serve.run
        from sockfleet.collector.commands import admin

        return admin.COMMANDS[args.action]
    if args.command == "web":
        from sockfleet.collector.web import command

        return command.run
    if args.command == "demo":
        from sockfleet.collector.commands import demo

        return demo.run
    from sockfleet.collector.commands import questions

    return {
        "talks": questions.talks_command,
        "history": questions.history_command,
        "diff": questions.diff_command,
        "audit": questions.audit_command,
    }.get(args.command, questions.question)


def main(argv: list[str]) -> int:
    # --debug may follow the command as well as precede it: `sockfleet hosts --debug`.
    debug = "--debug" in argv[1:]
    args = build_parser().parse(join_relative_times([*argv[:1], *(a for a in argv[1:] if a != "--debug")]))
    args.debug = args.debug or debug
    level = getattr(args, "log_level", None) or ("debug" if args.debug else "warning")
    logs.setup(level, getattr(args, "log_format", None) or "text")
    if not args.debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # each revision applied is not news
    try:
        return handler(args)(args)
    except CollectorError as exc:
        if args.debug:
            raise
        return fail("sockfleet", exc, exc.exit_status)
    except DBAPIError as exc:
        if args.debug:
            raise
        return fail("sockfleet", CollectorError(f"database error: {db.reason(exc)}"), 1)
    except KeyboardInterrupt:
        return 130


__all__ = ["main"]
