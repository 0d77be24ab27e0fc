"""What every ``sockfleet`` command line shares: mistakes are one line and exit status 2, with a suggestion.

``Parser`` is argparse without abbreviations (``--prot`` is not ``--proto``), whose errors name the
subcommand they belong to and suggest the nearest option or command::

    sockfleet ports: error: unrecognized argument --prot (did you mean --proto?); see sockfleet ports --help
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from sockfleet.config import Configurable


def terminal_width() -> int:
    """The width help text is wrapped to, as ``shutil.get_terminal_size`` tells it: ``$COLUMNS``, else the
    terminal's, else 80.  Told here so that argparse does not load ``shutil`` (and the compression
    modules it brings) at every start of every command."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, wrapping at the terminal's width without ``shutil``."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, terminal_width() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line; subparsers are of the same kind.

    A subcommand given a ``Configurable`` (``sockfleet.config``) also takes its options from the
    environment and a TOML file.
    """

    config: Configurable | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = _explained(self, message)
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """Parse ``argv``; an argument no (sub)command knows is reported by the subcommand it was given to."""
        args, extra = self.parse_known_args(argv)
        chosen = _chosen(self, args)
        if extra:
            chosen.error(f"unrecognized arguments: {' '.join(extra)}")
        for action in chosen._actions:
            # argparse reads `--at=--` as an empty list: an option of one value never takes it.
            if action.option_strings and action.nargs is None and isinstance(getattr(args, action.dest, None), list):
                chosen.error(f"argument {action.option_strings[0]}: expected one value, not --")
        for parser in _path(self, args):
            if isinstance(parser, Parser) and parser.config is not None:
                from sockfleet.config import ConfigError

                try:
                    # A command's own options come from the environment and its file; those of a command
                    # it is a part of (`web` of `web passwd`) keep their defaults.
                    if parser is chosen:
                        parser.config.apply(args)
                    else:
                        parser.config.settle(args)
                except ConfigError as exc:
                    parser.exit(2, f"{parser.prog}: error: {one_line(exc)}\n")
        return args


class CommandLineError(Exception):
    """A mistake in a command's options, as the one line ``Parser`` would print (``RaisingParser``)."""


class RaisingParser(Parser):
    """A ``Parser`` that raises ``CommandLineError`` instead of printing and exiting: for options that come
    from elsewhere than a command line, such as a web request's parameters."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(_explained(self, message))

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise CommandLineError((message or "").strip().removeprefix(f"{self.prog}: error: "))


Option = tuple[tuple[str, ...], dict[str, Any]]  # an option's flags, and how argparse takes it

# Options of every long-running command (agent run, collector serve, web).
CONFIG: Option = (
    ("--config",),
    {
        "metavar": "FILE",
        "help": "TOML file of these options, keys named like them (default: /etc/sockfleet/<program>.toml when "
        "it exists); flags win over $SOCKFLEET_<OPTION>, which wins over the file",
    },
)
LOG_FORMAT: Option = (
    ("--log-format",),
    {"choices": ("text", "json"), "default": "text", "help": "text lines (default) or one JSON object a line"},
)


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """Add each option; those of one ``group`` exclude each other."""
    groups: dict[str, Any] = {}
    for flags, settings in options:
        group = settings.get("group")
        target = parser if group is None else groups.setdefault(group, parser.add_mutually_exclusive_group())
        target.add_argument(*flags, **{key: value for key, value in settings.items() if key != "group"})


def _path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """The parser and each subparser the parsed arguments went through, outermost first."""
    for action in parser._actions:  # argparse keeps its subparsers nowhere else
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return [parser, *_path(action.choices[name], args)]
    return [parser]


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subparser the parsed arguments went through."""
    return _path(parser, args)[-1]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


def _explained(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's message made one line, with the nearest known option or command."""
    message = " ".join(message.split())
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        words = unknown.group(1).split()
        flags = [word.split("=")[0] for word in words if word.startswith("-")]
        word = flags[0] if flags else words[0]
        text = f"unrecognized argument{'s' if len(words) > 1 else ''} {' '.join(words)}"
        return text + suggestion(word, _options(parser))
    choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        known = re.findall(r"'([^']*)'", choice.group(3))
        what = (
            "command"
            if choice.group(1).isupper() or choice.group(1) in ("command", "action")
            else f"value for {choice.group(1)}"
        )
        near = suggestion(choice.group(2), [repr(name) for name in known], repr(choice.group(2)))
        return f"unknown {what} {choice.group(2)!r}{near} (one of {', '.join(known)})"
    return message


def suggestion(word: str, known: list[str], shown: str | None = None) -> str:
    import difflib

    near = difflib.get_close_matches(shown or word, known, n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


# Characters a terminal acts on rather than shows: C0 and C1 controls, DEL, and the invisible Unicode
# formatting characters that reorder or hide text (bidirectional overrides, zero-width marks).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to print to a terminal: control characters written out, as ``ls -b`` does.

    ``"\x1b[2Jpwn\x07"`` → ``"\\x1b[2Jpwn\\x07"``; text without them is returned as it is.
    """
    return _UNPRINTABLE.sub(_escaped, text) if _UNPRINTABLE.search(text) else text


def one_line(error: BaseException) -> str:
    """An exception as the one line an operator reads: its message without line breaks."""
    return printable(" ".join(str(error).split())) or type(error).__name__


def fail(prog: str, error: BaseException, status: int) -> int:
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    return status
