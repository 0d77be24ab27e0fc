"""``sockfleet web``: checks its options, binds its address, then serves until SIGINT or SIGTERM; and
``sockfleet web passwd``.

On loopback the page needs no login.  On any other address it needs TLS and a way to know users (a
password file, or a named header from a reverse proxy), or it does not start.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import ipaddress
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from sockfleet.collector import audit
from sockfleet.collector.commands.questions import open_db
from sockfleet.collector.errors import UsageError
from sockfleet.collector.web import app, passwords
from sockfleet.private import key_pair_problem

# Headers a browser or any client sets itself: naming one as the proxy's would admit everyone.
BROWSER_HEADERS = frozenset(
    (
        "host",
        "authorization",
        "cookie",
        "user-agent",
        "accept",
        "accept-language",
        "accept-encoding",
        "referer",
        "origin",
        "connection",
        "content-type",
        "content-length",
        "cache-control",
        "pragma",
        "upgrade",
    )
)


def run(args: argparse.Namespace) -> int:
    if args.web_action == "passwd":
        return passwd(args)
    return serve(args)


def passwd(args: argparse.Namespace) -> int:
    if args.delete:
        passwords.store(args.file, args.user, None)
        print(f"removed {args.user!r} from {args.file}", file=sys.stderr)
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise UsageError("no terminal to ask the password on: give it on standard input with --password-stdin")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    if len(password) < 8:
        raise UsageError("a password has at least 8 characters")
    passwords.store(args.file, args.user, password)
    print(f"set the password of {args.user!r} in {args.file}", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    host, port = split_listen(args.listen)
    tls = bool(args.tls_cert or args.tls_key)
    if tls:
        check_tls(args.tls_cert, args.tls_key)
    if not loopback(host):
        if not tls:
            raise UsageError(f"--listen {args.listen}: beyond loopback the page needs --tls-cert and --tls-key")
        if args.password_file is None and args.trusted_header is None:
            raise UsageError(
                f"--listen {args.listen}: beyond loopback the page needs --password-file (see `sockfleet web "
                "passwd`) or --trusted-header from a reverse proxy that authenticates users"
            )
    if args.password_file is not None and args.trusted_header is not None:
        raise UsageError("--password-file and --trusted-header exclude each other: say who authenticates users")
    if args.trusted_header is not None and args.trusted_header.lower() in BROWSER_HEADERS:
        raise UsageError(f"--trusted-header {args.trusted_header}: every browser sends it; name the proxy's own header")
    if args.policy is not None:
        audit.load_policy(args.policy)  # a mistake in it is one line now, not on every audit page
    users = passwords.PasswordFile(args.password_file) if args.password_file is not None else None
    engine = open_db(args.db, {})
    local = users is None and args.trusted_header is None
    settings = app.Settings(engine, args.policy, users, args.trusted_header, tls, local)
    listener = bind(host, port, args.listen)
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    login = (
        "password file" if users is not None else f"header {args.trusted_header}" if args.trusted_header else "no login"
    )
    print(
        f"sockfleet web: serving {scheme}://{shown}:{listener.getsockname()[1]}/ (read only; {login})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app.build(settings),
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        log_config=None,  # sockfleet's own logging (--log-level, --log-format)
        server_header=False,
        proxy_headers=False,
    )
    Server(config).run(sockets=[listener])
    return 0


class Server(uvicorn.Server):
    """uvicorn's server, but SIGINT and SIGTERM end it with exit status 0 (uvicorn raises the signal again once
    it has stopped, and the process would die of it: no clean exit for the service manager or coverage)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ("127.0.0.1", 8080); ``"[::1]:0"`` → ("::1", 0)."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r}: not HOST:PORT")
    return host, int(port)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, listen: str) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise UsageError(f"--listen {listen}: {exc.strerror}") from exc
    except socket.gaierror as exc:
        raise UsageError(f"--listen {listen}: {exc}") from exc


def check_tls(cert: str | None, key: str | None) -> None:
    if not (cert and key):
        raise UsageError("--tls-cert and --tls-key go together")
    problem = key_pair_problem(cert, key)
    if problem:
        raise UsageError(problem)
