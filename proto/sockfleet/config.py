"""Options of a long-running command from the environment and a TOML file, as well as from flags.

Each option of ``agent run``, ``collector serve`` and ``web`` has a key of the same name in the program's
file and a variable in the environment::

    --tls-cert /etc/ssl/c.pem        flag, wins over everything
    SOCKFLEET_TLS_CERT=/etc/ssl/c.pem   environment, wins over the file
    tls-cert = "/etc/ssl/c.pem"      file: --config FILE, $SOCKFLEET_CONFIG, or /etc/sockfleet/<program>.toml
                                     when it exists; then the built-in default

A switch (``--insecure``) is ``insecure = true`` in the file and ``SOCKFLEET_INSECURE=1`` in the environment.
An unknown key, or a value of the wrong type, is one line naming the key and where it came from; the
command does not start.  Standard library only: the agent reads its file without loading anything else.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from sockfleet.commandline import suggestion

DIRECTORY = "/etc/sockfleet"
ENVIRONMENT = "SOCKFLEET_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_TOML_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "text", dict: "a table"}


class ConfigError(Exception):
    """A configuration value sockfleet cannot use; its message names the key and where it came from."""


class _Unset:
    """The default of every configurable option until flags, environment and file have been asked."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


class Configurable:
    """What a command's parser needs to take its options from the environment and a file.

    A plain class, and ``tomllib`` loaded only to read a file: every command's parser makes one, and a
    one-shot ``agent snapshot`` should not pay for ``dataclasses`` or a TOML parser at each start.
    """

    def __init__(self, program: str) -> None:
        self.program = program  # names the default file: /etc/sockfleet/<program>.toml
        self.options: dict[str, argparse.Action] = {}  # by key: "tls-cert"
        self.defaults: dict[str, Any] = {}  # by dest, as the option table gave them
        self.required: list[str] = []  # keys that must come from somewhere

    def apply(self, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
        """Fill each option not given as a flag from the environment, else the file, else its default."""
        environ = os.environ if environ is None else environ
        path = self.path(args.config, environ)
        args.config = path
        values = self.read(path) if path else {}
        for key, action in self.options.items():
            if getattr(args, action.dest) is not UNSET:
                continue
            variable = ENVIRONMENT + key.upper().replace("-", "_")
            if environ.get(variable, "").strip():  # set but empty: as if not set, as shells have it
                value = _from_text(action, environ[variable], f"${variable}")
            elif key in values:
                value = _from_toml(action, values[key], f"{path}: {key}")
            else:
                value = _default(action, self.defaults[action.dest])
            setattr(args, action.dest, value)
        empty = [key for key, action in self.options.items() if _blank(getattr(args, action.dest))]
        if empty:
            raise ConfigError(f"--{empty[0]} is empty: give a value, or leave it out for the default")
        missing = [key for key in self.required if getattr(args, self.options[key].dest) is None]
        if missing:
            key = missing[0]
            variable = ENVIRONMENT + key.upper().replace("-", "_")
            raise ConfigError(f"--{key} is required (or `{key} = ...` in the config file, or ${variable})")

    def settle(self, args: argparse.Namespace) -> None:
        """Give each option not given as a flag its default, without asking the environment or a file."""
        for action in self.options.values():
            if getattr(args, action.dest) is UNSET:
                setattr(args, action.dest, _default(action, self.defaults[action.dest]))

    def path(self, given: str | None, environ: Mapping[str, str]) -> str | None:
        """The file to read: ``--config``, else ``$SOCKFLEET_CONFIG``, else the program's file if it exists."""
        if given is not None:
            if not given.strip():
                raise ConfigError("--config is empty: name a file, or leave it out")
            return given
        if environ.get(ENVIRONMENT + "CONFIG", "").strip():
            return environ[ENVIRONMENT + "CONFIG"]
        default = os.path.join(DIRECTORY, f"{self.program}.toml")
        return default if os.path.exists(default) else None

    def read(self, path: str) -> dict[str, Any]:
        """The file's keys, each one an option of this command."""
        import tomllib

        try:
            with open(path, "rb") as file:
                values = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"--config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not TOML (not UTF-8 text)") from exc
        for key in values:
            if key not in self.options:
                raise ConfigError(
                    f"{path}: unknown key {key!r}{suggestion(repr(key), [repr(k) for k in self.options])}"
                )
        return values


def configurable(parser: argparse.ArgumentParser, program: str) -> Configurable:
    """Make every option of ``parser`` (but ``--config`` and ``--help``) one the environment and a file may set."""
    config = Configurable(program)
    for action in parser._actions:
        long = [flag for flag in action.option_strings if flag.startswith("--")]
        if not long or action.dest in ("help", "config"):
            continue
        key = long[0][2:]
        config.options[key] = action
        config.defaults[action.dest] = action.default
        action.default = UNSET
        if action.required:
            action.required = False  # it may come from the environment or the file
            config.required.append(key)
    return config


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def _switch(action: argparse.Action) -> bool:
    """``--insecure``: an option that takes no value and stores True."""
    return action.nargs == 0 and action.const is True


def _from_text(action: argparse.Action, text: str, origin: str) -> Any:
    """A value from the environment, where every value is text."""
    if _switch(action):
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{origin}: {text!r} is not a switch (1, true, yes, on; 0, false, no, off)")
    return _checked(action, _converted(action, text, origin), origin)


def _from_toml(action: argparse.Action, value: Any, origin: str) -> Any:
    """A value from the file, whose type TOML already decided."""
    kind = action.type
    expected: type = bool if _switch(action) else int if kind is int else float if kind is float else str
    if expected is float and type(value) is int:
        value = float(value)
    if type(value) is not expected:
        quoted = (
            f' (in quotes: {origin.rsplit(": ", 1)[-1]} = "{value}")'
            if expected is str and type(value) in (int, float)
            else ""
        )
        raise ConfigError(f"{origin} must be {_TOML_TYPES[expected]}, not {_shown_type(value)}{quoted}")
    if isinstance(value, str) and callable(kind):
        value = _converted(action, value, origin)
    return _checked(action, value, origin)


def _converted(action: argparse.Action, text: str, origin: str) -> Any:
    kind = action.type
    if not callable(kind):
        return text
    try:
        return kind(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except ValueError:
        what = "an integer" if kind is int else "a number" if kind is float else "a valid value"
        raise ConfigError(f"{origin}: {text!r} is not {what}") from None


def _checked(action: argparse.Action, value: Any, origin: str) -> Any:
    if action.choices is not None and value not in action.choices:
        known = ", ".join(map(str, action.choices))
        raise ConfigError(f"{origin}: {value!r} is not one of {known}")
    return value


def _default(action: argparse.Action, default: Any) -> Any:
    """The option table's default, converted as argparse converts a text default."""
    if isinstance(default, str) and callable(action.type):
        return action.type(default)
    return default


def _shown_type(value: Any) -> str:
    for kind, name in _TOML_TYPES.items():
        if type(value) is kind:
            return name
    return "a list" if isinstance(value, list) else "a date or time"
