"""The web server's application: the pages (static files), ``/api/v1/...``, ``/healthz``, and the guard in
front of them: who may ask (a password file, or a reverse proxy's header) and the strict headers every
answer carries (no inline script, no framing, nothing from elsewhere)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sockfleet.collector.web import api, passwords
from sockfleet.commandline import printable

STATIC = Path(__file__).resolve().parent / "static"  # the source folder, also under an editable install
PAGES = {"/": "map.html", "/diff": "diff.html", "/ports": "ports.html", "/audit": "audit.html", "/host": "host.html"}
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
log = logging.getLogger("sockfleet.web")


@dataclass(frozen=True)
class Settings:
    """What the server answers from: its database (read only), the audit policy, who may ask."""

    engine: Engine
    policy: str | None = None
    users: passwords.PasswordFile | None = None  # --password-file
    trusted_header: str | None = None  # a reverse proxy names the user it authenticated in this header
    tls: bool = False
    local: bool = False  # loopback without a login: only requests that name this machine (no DNS rebinding)


def build(settings: Settings) -> ASGIApp:
    """The application, behind its guard."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / PAGES[request.url.path], headers={"cache-control": "no-cache"})

    def question(request: Request) -> Response:
        name = request.path_params["question"]
        if name not in api.QUESTIONS:
            return JSONResponse({"error": f"no such question {name!r} (one of {', '.join(api.QUESTIONS)})"}, 404)
        reply = api.answer(name, list(request.query_params.multi_items()), settings.engine, settings.policy)
        headers = {"cache-control": "no-store", "x-sockfleet-exit-status": str(reply.exit_status)}
        if reply.notes:
            headers["x-sockfleet-notes"] = printable(reply.notes).encode("ascii", "backslashreplace").decode()
        return Response(reply.body, reply.status, headers, media_type="application/json")

    def recorded(request: Request) -> Response:
        reply = api.recorded(settings.engine)
        return Response(reply.body, reply.status, {"cache-control": "no-store"}, media_type="application/json")

    def health(request: Request) -> Response:
        try:
            with settings.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError:
            return PlainTextResponse("database unavailable\n", 503)
        return PlainTextResponse("ok\n")

    routes = [
        *(Route(path, page) for path in PAGES),
        Route("/api/v1/range", recorded),
        Route("/api/v1/{question}", question),
        Route("/healthz", health),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    return Guard(Starlette(routes=routes), settings)


def local(host: str) -> bool:
    """Whether a request's Host header names this machine: ``localhost``, ``127.0.0.1:8080``, ``[::1]``."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.removeprefix("[").removesuffix("]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def basic(authorization: str) -> tuple[str, str] | None:
    """``Basic <base64 of name:password>`` → (name, password); anything else → None."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 1024:
        return None
    try:
        name, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if colon and name else None


class Guard:
    """In front of every request: the user must be known (when a method is set), and every answer
    carries the strict headers.  ``/healthz`` is open, for the service manager and load balancers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def strict(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = HEADERS + ([(b"strict-transport-security", b"max-age=31536000")] if self.settings.tls else [])
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        request = Request(scope)
        if self.settings.local and not local(request.headers.get("host", "")):
            await PlainTextResponse("this page answers requests for localhost only\n", 421)(scope, receive, strict)
            return
        if scope["path"] != "/healthz" and not await self.admitted(request):
            await self.refuse(scope, receive, strict)
            return
        await self.app(scope, receive, strict)

    async def admitted(self, request: Request) -> bool:
        if self.settings.trusted_header is not None:
            return bool(request.headers.get(self.settings.trusted_header, "").strip())
        if self.settings.users is None:
            return True
        credentials = basic(request.headers.get("authorization", ""))
        if credentials is None:
            return False
        # scrypt takes about 50 ms: in a thread, so that other requests go on meanwhile.
        if await run_in_threadpool(self.settings.users.check, *credentials):
            return True
        log.warning("refused a login as %r", printable(credentials[0][:64]))
        return False

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.settings.trusted_header is not None:
            response = PlainTextResponse(f"refused: no {self.settings.trusted_header} header from the proxy\n", 401)
        else:
            response = PlainTextResponse(
                "log in to see the fleet\n", 401, {"www-authenticate": 'Basic realm="sockfleet", charset="UTF-8"'}
            )
        await response(scope, receive, send)
