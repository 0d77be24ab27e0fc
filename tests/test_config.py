"""Options of the long-running commands from flags, $SOCKFLEET_*, a TOML file and defaults, in that order;
every mistake in the file or the environment is one line naming the key; the example files in deploy/
document every option with its real default."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sockfleet.agent.cli import build_parser as agent_parser
from sockfleet.collector.parser import build_parser as collector_parser
from sockfleet.commandline import CONFIG, Parser, add_options
from sockfleet.config import UNSET, Configurable
from tests.collector.harness import ENV, ask, sockfleet, wait_for
from tests.conftest import ROOT, run_sockfleet

DEPLOY = ROOT / "deploy"
COMMANDS = {"agent": ("agent", "run"), "collector": ("collector", "serve"), "web": ("web",)}


def subparser(program: str) -> Parser:
    parser: argparse.ArgumentParser = agent_parser() if program == "agent" else collector_parser()
    for name in COMMANDS[program][1:] if program == "agent" else COMMANDS[program]:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    assert isinstance(parser, Parser)
    return parser


def config_of(program: str) -> Configurable:
    config = subparser(program).config
    assert config is not None
    return config


def parse(program: str, *argv: str) -> argparse.Namespace:
    if program == "agent":
        return agent_parser().parse(["run", *argv])
    return collector_parser().parse([*COMMANDS[program], *argv])


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no $SOCKFLEET_* of the machine's, and a config file only when given."""
    import os

    for name in list(os.environ):
        if name.startswith("SOCKFLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("sockfleet.config.DIRECTORY", "/nonexistent-sockfleet-config")


def test_flag_wins_over_environment_which_wins_over_file_which_wins_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "agent.toml", 'collector = "file:1"\ninterval = "30s"\nspool-max-bytes = 1000\n')
    monkeypatch.setenv("SOCKFLEET_INTERVAL", "20s")
    monkeypatch.setenv("SOCKFLEET_NO_EVENTS", "yes")
    args = parse("agent", "--config", config, "--spool-max-bytes", "5")
    assert args.collector == "file:1"  # file over default (none)
    assert args.interval == "20s"  # environment over file
    assert args.spool_max_bytes == 5  # flag over file
    assert args.no_events is True  # environment over default
    assert args.namespaces == "all" and args.log_level == "info"  # defaults
    assert args.config == config
    assert parse("agent", "--config", config, "--interval", "1s").interval == "1s"  # flag over environment


def test_the_file_is_found_by_environment_or_in_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "collector.toml", 'listen = "127.0.0.1:7000"\nrate-limit = 3\n')
    monkeypatch.setattr("sockfleet.config.DIRECTORY", str(tmp_path))
    args = parse("collector")
    assert (args.listen, args.rate_limit, args.config) == ("127.0.0.1:7000", 3.0, str(tmp_path / "collector.toml"))
    other = write(tmp_path / "other.toml", 'listen = "127.0.0.1:7001"\n')
    monkeypatch.setenv("SOCKFLEET_CONFIG", other)
    assert parse("collector").listen == "127.0.0.1:7001"
    monkeypatch.delenv("SOCKFLEET_CONFIG")
    (tmp_path / "collector.toml").unlink()
    args = parse("collector")
    assert (args.listen, args.config) == ("[::]:50051", None)  # no file: the defaults


def test_without_any_source_the_defaults_are_the_option_tables(tmp_path: Path) -> None:
    args = parse("collector", "--insecure")
    assert args.insecure is True and args.allow_anonymous is False
    assert (args.rate_limit, args.max_message_mb, args.max_clock_skew, args.db) == (20.0, 64.0, "2m", None)
    assert not [name for name, value in vars(args).items() if value is UNSET]


@pytest.mark.parametrize(
    ("program", "text", "message"),
    [
        ("agent", 'colector = "a:1"\n', "unknown key 'colector' (did you mean 'collector'?)"),
        (
            "agent",
            'collector = "a:1"\ninterval = 15\n',
            'interval must be text, not an integer (in quotes: interval = "15")',
        ),
        ("agent", 'collector = "a:1"\ninsecure = "yes"\n', "insecure must be true or false, not text"),
        ("agent", 'collector = "a:1"\nspool-max-bytes = "64M"\n', "spool-max-bytes must be an integer, not text"),
        ("agent", 'collector = "a:1"\nspool-max-bytes = 1.5\n', "spool-max-bytes must be an integer, not a number"),
        (
            "agent",
            'collector = "a:1"\nlog-level = "loud"\n',
            "log-level: 'loud' is not one of debug, info, warning, error",
        ),
        ("agent", "collector = 1\n", 'collector must be text, not an integer (in quotes: collector = "1")'),
        ("agent", '[collector]\nhost = "a"\n', "collector must be text, not a table"),
        ("agent", 'collector = ["a:1"]\n', "collector must be text, not a list"),
        ("agent", "collector = \n", "not TOML: Invalid value (at line 1, column 13)"),
        ("collector", "rate-limit = true\n", "rate-limit must be a number, not true or false"),
        ("collector", 'log-format = "xml"\n', "log-format: 'xml' is not one of text, json"),
        ("collector", 'config = "other.toml"\n', "unknown key 'config'"),
    ],
)
def test_a_mistake_in_the_file_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, program: str, text: str, message: str
) -> None:
    config = write(tmp_path / "bad.toml", text)
    result = run_sockfleet(*COMMANDS[program], "--config", config, check=False)
    assert result.returncode == 2
    assert result.stderr == f"sockfleet {' '.join(COMMANDS[program])}: error: {config}: {message}\n"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SOCKFLEET_SPOOL_MAX_BYTES", "ten", "$SOCKFLEET_SPOOL_MAX_BYTES: 'ten' is not an integer"),
        (
            "SOCKFLEET_INSECURE",
            "maybe",
            "$SOCKFLEET_INSECURE: 'maybe' is not a switch (1, true, yes, on; 0, false, no, off)",
        ),
        ("SOCKFLEET_NAMESPACES", "some", "$SOCKFLEET_NAMESPACES: 'some' is not one of all, current"),
    ],
)
def test_a_mistake_in_the_environment_is_one_line_naming_the_variable(variable: str, value: str, message: str) -> None:
    result = subprocess.run(
        sockfleet("agent", "run", "--collector", "a:1"),
        capture_output=True,
        text=True,
        env={**ENV, variable: value},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (2, f"sockfleet agent run: error: {message}\n")


def test_a_missing_file_or_a_missing_required_option_is_one_line(tmp_path: Path) -> None:
    result = run_sockfleet("agent", "run", "--config", str(tmp_path / "none.toml"), check=False)
    assert (result.returncode, result.stderr) == (
        2,
        f"sockfleet agent run: error: --config {tmp_path / 'none.toml'}: No such file or directory\n",
    )
    result = run_sockfleet("agent", "run", "--config", write(tmp_path / "empty.toml", ""), check=False)
    assert (result.returncode, result.stderr) == (
        2,
        "sockfleet agent run: error: --collector is required (or `collector = ...` in the config file, "
        "or $SOCKFLEET_COLLECTOR)\n",
    )


def test_a_typed_option_is_checked_as_on_the_command_line(tmp_path: Path) -> None:
    """A value from the file goes through the same check as the flag's (here: a port number)."""
    parser = Parser(prog="sockfleet test")
    add_options(parser, (CONFIG,))
    parser.add_argument("--port", type=_port)
    parser.add_argument("--ratio", type=float, default="0.5")
    from sockfleet.config import configurable

    parser.config = configurable(parser, "test")
    assert parser.parse(["--config", write(tmp_path / "a.toml", 'port = "80"\n')]).port == 80
    assert parser.parse(["--config", str(tmp_path / "a.toml")]).ratio == 0.5  # a text default, converted
    with pytest.raises(SystemExit) as exit_status:
        parser.parse(["--config", write(tmp_path / "b.toml", 'port = "99999"\n')])
    assert exit_status.value.code == 2


def _port(text: str) -> int:
    if not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535)")
    return int(text)


def example_keys(path: Path) -> list[tuple[str, str]]:
    """Each ``key = value`` line of an example file, commented or not: (key, value as written)."""
    pattern = re.compile(r"^(?:# )?([a-z][a-z-]*) = (.+)$")
    return [(m.group(1), m.group(2)) for line in path.read_text().splitlines() if (m := pattern.match(line))]


@pytest.mark.parametrize("program", ["agent", "collector", "web"])
def test_the_example_file_documents_every_option_with_its_default(program: str) -> None:
    """Every option has a line; where the option has a default, its first line shows exactly that default."""
    config = config_of(program)
    first: dict[str, str] = {}
    for key, value in example_keys(DEPLOY / f"{program}.toml"):
        first.setdefault(key, value)
    assert set(first) == set(config.options)
    for key, value in first.items():
        action = config.options[key]
        default = config.defaults[action.dest]
        if default is not None:
            assert tomllib.loads(f"v = {value}")["v"] == default, f"deploy/{program}.toml: {key}"


@pytest.mark.parametrize("program", ["agent", "collector", "web"])
def test_every_line_of_the_example_file_is_accepted(tmp_path: Path, program: str) -> None:
    """The example with every commented key taken in (the first value of each) is a valid file."""
    seen: dict[str, str] = {}
    for key, value in example_keys(DEPLOY / f"{program}.toml"):
        seen.setdefault(key, value)
    config = write(tmp_path / f"{program}.toml", "".join(f"{key} = {value}\n" for key, value in seen.items()))
    args = parse(program, "--config", config)
    for key, value in seen.items():
        assert getattr(args, config_of(program).options[key].dest) == tomllib.loads(f"v = {value}")["v"]
    plain = write(tmp_path / "as-shipped.toml", (DEPLOY / f"{program}.toml").read_text())
    assert parse(program, "--config", plain).config == plain


def test_a_collector_and_an_agent_configured_by_file_and_environment(tmp_path: Path) -> None:
    """Real processes: the collector takes everything from its file, the agent from its file and $SOCKFLEET_*."""
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    collector_config = write(
        tmp_path / "collector.toml",
        f'listen = "127.0.0.1:0"\ninsecure = true\nallow-anonymous = true\ndb = "{db_url}"\n',
    )
    collector = subprocess.Popen(
        sockfleet("collector", "serve", "--config", collector_config),
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    agent: subprocess.Popen[str] | None = None
    try:
        assert collector.stderr is not None
        line = collector.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match and str(tmp_path / "fleet.db") in line, line
        agent_config = write(tmp_path / "agent.toml", 'insecure = true\ninterval = "0.5s"\nnamespaces = "current"\n')
        agent = subprocess.Popen(
            sockfleet("agent", "run", "--config", agent_config),
            stderr=subprocess.DEVNULL,
            text=True,
            env={**ENV, "SOCKFLEET_COLLECTOR": f"127.0.0.1:{match.group(1)}", "SOCKFLEET_HOST": "configured-host"},
            cwd=ROOT,
        )

        def reported() -> bool:
            hosts: list[dict[str, Any]] = json.loads(ask(db_url, "hosts", "--format", "json").stdout)
            return any(h["host"] == "configured-host" and h["status"] == "live" for h in hosts)

        wait_for(reported, "the configured agent to report")
    finally:
        for proc in (agent, collector):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        if collector.stderr is not None:
            collector.stderr.close()


def test_an_empty_value_is_a_mistake_in_a_file_or_a_flag_and_unset_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_sockfleet("web", "--config", write(tmp_path / "web.toml", 'password-file = ""\n'), check=False)
    assert (result.returncode, result.stderr) == (
        2,
        "sockfleet web: error: --password-file is empty: give a value, or leave it out for the default\n",
    )
    result = run_sockfleet("collector", "serve", "--insecure", "--tls-client-ca", "", check=False)
    assert result.returncode == 2 and "--tls-client-ca is empty" in result.stderr
    result = run_sockfleet("agent", "run", "--config", "", check=False)
    assert (result.returncode, result.stderr) == (
        2,
        "sockfleet agent run: error: --config is empty: name a file, or leave it out\n",
    )
    monkeypatch.setenv("SOCKFLEET_INTERVAL", "")
    monkeypatch.setenv("SOCKFLEET_CONFIG", " ")
    args = parse("agent", "--collector", "a:1")
    assert (args.interval, args.config) == ("15s", None)  # set but empty: as if not set


def test_a_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "agent.toml"
    binary.write_bytes(b"\xff\xfe\x00collector = 1\n")
    result = run_sockfleet("agent", "run", "--config", str(binary), check=False)
    assert (result.returncode, result.stderr) == (
        2,
        f"sockfleet agent run: error: {binary}: not TOML (not UTF-8 text)\n",
    )
