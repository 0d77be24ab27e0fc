"""The parser of every ``sockfleet`` command on the collector's side, written as tables of options: one
command, one row; each option as argparse takes it."""

from __future__ import annotations

import argparse

from sockfleet.collector import db, output
from sockfleet.collector.rules import STATES
from sockfleet.commandline import CONFIG, LOG_FORMAT, Option, Parser, add_options
from sockfleet.config import configurable

PROTOS = ("tcp", "udp", "unix")
LOG_LEVELS = ("debug", "info", "warning", "error")


def port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{number} is not a port (0-65535)")
    return number


def states(text: str) -> tuple[str, ...]:
    """``"listen,established"`` → ("LISTEN", "ESTABLISHED"); the kernel's names, any case."""
    names = tuple(name.strip().upper().replace("-", "_") for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STATES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: states are {', '.join(STATES)}")
    return names


DB: Option = (("--db",), {"help": f"database URL (default: {db.default_url()}, or $SOCKFLEET_DB)"})
INIT: Option = (
    ("--init",),
    {"action": "store_true", "help": "add sockfleet's tables to a database that already holds other tables"},
)
AT: Option = (("--at",), {"help": "as of this time: RFC 3339 (2026-11-25T10:00:00Z) or relative (-15m, -2h)"})
FORMAT: Option = (("--format",), {"choices": output.FORMATS, "default": "table"})
FILTERS: tuple[Option, ...] = (
    (("--host",), {"help": "only this host (its name or its id)"}),
    (("--port",), {"type": port, "help": "only this local port"}),
    (("--proto",), {"choices": PROTOS, "help": "only this protocol"}),
    (("--state",), {"type": states, "help": "only sockets in these states (LISTEN,ESTABLISHED,...)"}),
    (("--process",), {"help": "only sockets owned by a process of this name"}),
    (("--exposed",), {"action": "store_true", "help": "only inet sockets bound beyond loopback"}),
)
SERVE: tuple[Option, ...] = (
    CONFIG,
    (("--listen",), {"default": "[::]:50051", "help": "HOST:PORT to listen on (default [::]:50051)"}),
    (("--tls-cert",), {"help": "PEM certificate chain to serve with"}),
    (("--tls-key",), {"help": "PEM private key of the certificate"}),
    (
        ("--tls-client-ca",),
        {"help": "mutual TLS: agents must show a certificate this CA signed, whose common name is their host id"},
    ),
    (("--insecure",), {"action": "store_true", "help": "serve plain text, without TLS (local trials only)"}),
    (
        ("--allow-anonymous",),
        {"action": "store_true", "help": "accept agents without an enrolled token (local trials only)"},
    ),
    (
        ("--rate-limit",),
        {
            "type": float,
            "default": 20.0,
            "help": "repeated scans per second one agent may send, "
            "burst twice that (default 20; 0: no limit); an agent replaying scans it took while away "
            "is never limited",
        },
    ),
    (
        ("--max-message-mb",),
        {
            "type": float,
            "default": 64.0,
            "help": "largest message accepted, in MiB (default 64: "
            "about 500,000 sockets; larger snapshots come in parts)",
        },
    ),
    (
        ("--max-clock-skew",),
        {"default": "2m", "help": "refuse scans dated further ahead of this collector's clock (default 2m)"},
    ),
    (
        ("--hello-timeout",),
        {"default": "10s", "help": "close a stream that has not said hello within this time (default 10s)"},
    ),
    INIT,
    (
        ("--log-level",),
        {
            "choices": LOG_LEVELS,
            "default": "info",
            "help": "agents connecting, leaving and refused are logged at info (default)",
        },
    ),
    LOG_FORMAT,
    (
        ("--metrics-listen",),
        {"help": "HOST:PORT to serve Prometheus metrics (/metrics) and /healthz on (default: not served)"},
    ),
    (
        ("--retain",),
        {
            "help": "remove history that ended longer ago than this, like 30d, in small batches while serving "
            "(default: keep everything)"
        },
    ),
    DB,
)
WEB: tuple[Option, ...] = (
    CONFIG,
    (("--listen",), {"default": "127.0.0.1:8080", "help": "HOST:PORT to serve the page on (default 127.0.0.1:8080)"}),
    DB,
    (("--policy",), {"help": "TOML policy file for the audit page (see the README)"}),
    (("--tls-cert",), {"help": "PEM certificate chain to serve HTTPS with"}),
    (("--tls-key",), {"help": "PEM private key of the certificate"}),
    (
        ("--password-file",),
        {"help": "users and salted password hashes, made by `sockfleet web passwd`; the page asks for them"},
    ),
    (
        ("--trusted-header",),
        {
            "metavar": "NAME",
            "help": "a reverse proxy in front authenticates users and names them in this request header "
            "(e.g. X-Forwarded-User); requests without it are refused",
        },
    ),
    (("--log-level",), {"choices": LOG_LEVELS, "default": "info", "help": "each request is logged at info (default)"}),
    LOG_FORMAT,
)
WEB_PASSWD: tuple[Option, ...] = (
    (("--file",), {"required": True, "help": "the password file (made with mode 0600 if it does not exist)"}),
    (("--user",), {"required": True, "help": "the user's name"}),
    (
        ("--password-stdin",),
        {"action": "store_true", "help": "read the password from standard input instead of asking twice"},
    ),
    (("--delete",), {"action": "store_true", "help": "remove the user instead"}),
)


ACTIONS: dict[str, tuple[str, tuple[Option, ...]]] = {
    "serve": ("receive agents' snapshots over gRPC and store them", SERVE),
    "enroll": (
        "issue a host's agent token (printed once; only its hash is kept)",
        (
            (("--host",), {"required": True, "help": "the host's id: its agent's --host, or its /etc/machine-id"}),
            (("--name",), {"help": "the name the host reports under (default: the name in its first hello)"}),
            (
                ("--rotate",),
                {
                    "action": "store_true",
                    "help": "issue a new token for an enrolled host; the earlier one stops working",
                },
            ),
            INIT,
            DB,
        ),
    ),
    "revoke": (
        "revoke a host's agent token; its open streams end",
        ((("--host",), {"required": True, "help": "the host (its id or its name)"}), DB),
    ),
    "rename": (
        "give a host another name",
        (
            (("--host",), {"required": True, "help": "the host (its id or its current name)"}),
            (("--name",), {"required": True, "help": "its new name"}),
            DB,
        ),
    ),
    "tokens": ("the agent tokens issued: for which host, when, last used, revoked", (FORMAT, DB)),
    "migrate": ("create or upgrade the database schema", (INIT, DB)),
    "prune": (
        "remove history that ended before a horizon; questions about earlier moments are then refused",
        ((("--older-than",), {"required": True, "help": "the horizon, as an age: 30d, 12h"}), DB),
    ),
    "status": ("the database: schema revision, retention horizon, hosts reporting", (FORMAT, DB)),
}
COMMANDS: dict[str, tuple[str, tuple[Option, ...]]] = {
    "hosts": ("hosts, their addresses and whether they report", (DB, AT, FORMAT)),
    "sockets": ("every socket on the fleet's hosts", (DB, AT, FORMAT, *FILTERS)),
    "ports": ("listening sockets: TCP LISTEN, unconnected UDP, Unix listeners", (DB, AT, FORMAT, *FILTERS)),
    "talks": (
        "who talks to whom: edges between processes on hosts",
        (
            DB,
            (("--at",), {"help": "as of this time (default now)"}),
            (("--since",), {"help": "edges alive at any time from this time ..."}),
            (("--until",), {"help": "... to this time (default now)"}),
            (("--host",), {"help": "only edges with this host (name or id) at either end"}),
            (("--port",), {"type": port, "help": "only edges to this server port"}),
            (("--process",), {"help": "only edges with a process of this name at either end"}),
            (("--format",), {"choices": (*output.FORMATS, "dot"), "default": "table"}),
        ),
    ),
    "history": (
        "a host's socket timeline: when each opened and closed",
        (
            DB,
            (("--host",), {"required": True, "help": "the host (its name or its id)"}),
            (("--port",), {"type": port, "help": "only sockets on this local port", "group": "where"}),
            (("--path",), {"help": "only Unix sockets on this path", "group": "where"}),
            (("--since",), {"help": "only sockets alive at or after this time"}),
            FORMAT,
        ),
    ),
    "diff": (
        "listeners and edges opened and closed between two moments",
        (
            DB,
            (("--from",), {"dest": "start", "required": True, "help": "the earlier moment"}),
            (("--to",), {"dest": "end", "help": "the later moment (default: now)"}),
            (("--host",), {"help": "only this host (name or id)"}),
            (
                ("--short-lived",),
                {
                    "action": "store_true",
                    "help": "also edges whose connections opened and closed in between (seen by socket-destroy events)",
                },
            ),
            FORMAT,
        ),
    ),
    "audit": (
        "audit listeners: exposed, new, a policy's rules, hosts not seen",
        (
            DB,
            (("--policy",), {"help": "TOML policy file (see the README)"}),
            (("--at",), {"help": "as of this time (default now)"}),
            (("--new-within",), {"default": "24h", "help": "a listener first seen this recently is new (24h)"}),
            (
                ("--lookback",),
                {"default": "7d", "help": "a host observed this recently (or enrolled) must be observed now (7d)"},
            ),
            (
                ("--allow-unobserved",),
                {"action": "store_true", "help": "report hosts not observed as notices, without exit status 3"},
            ),
            (("--format",), {"choices": ("table", "json"), "default": "table"}),
        ),
    ),
    "web": ("a read-only web page: the map of who talks to whom, ports, audit, hosts", WEB),
    "demo": (
        "a collector and an agent on this machine; shows the open ports and who talks to whom",
        (
            (("--db",), {"help": "database URL (default: demo.db beside the default database)"}),
            (("--interval",), {"default": "5s", "help": "the agent's scan interval (default 5s)"}),
            (("--once",), {"action": "store_true", "help": "stop after showing the ports once"}),
        ),
    ),
}


def build_parser(kind: type[Parser] = Parser) -> Parser:
    """The parser of every collector-side command; of ``kind`` (a ``RaisingParser`` for the web API)."""
    parser = kind(prog="sockfleet", description="Questions to a sockfleet collector.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    collector = commands.add_parser("collector", help="run the collector, manage its database and agent tokens")
    actions = collector.add_subparsers(dest="action", required=True, metavar="ACTION")
    for group, table in ((actions, ACTIONS), (commands, COMMANDS)):
        for name, (text, options) in table.items():
            add_options(group.add_parser(name, help=text), options)
    serve = actions.choices["serve"]
    assert isinstance(serve, Parser)
    serve.config = configurable(serve, "collector")
    web = commands.choices["web"]
    assert isinstance(web, Parser)
    web.config = configurable(web, "web")
    passwd = web.add_subparsers(dest="web_action", metavar="ACTION").add_parser(
        "passwd", help="add a user to a password file, or change a user's password"
    )
    add_options(passwd, WEB_PASSWD)
    return parser
