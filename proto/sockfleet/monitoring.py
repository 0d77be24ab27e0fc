"""The HTTP endpoint of ``--metrics-listen HOST:PORT``, the same for the agent and the collector:

* ``GET /metrics``: the process's metrics in Prometheus's text format;
* ``GET /healthz``: ``200 ok`` when the process is healthy, else ``503`` and one line saying why.

It runs in a thread of its own, so a scrape never waits on the program's event loop (nor the loop on it).
Loaded only when ``--metrics-listen`` is given: a one-shot ``agent snapshot`` never pays for prometheus_client.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("sockfleet.monitoring")
Health = Callable[[], str | None]  # None when healthy, else why not (one line)


def address(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` → ("127.0.0.1", 9464); ``"[::]:9464"`` → ("::", 9464); ``":9464"``: every IPv4 address.

    A value that is not ``HOST:PORT`` raises ``ValueError`` with the line to print.
    """
    host, colon, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        colon = ""  # an IPv6 address goes in brackets, or its last group would pass for the port
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-listen: {listen!r} is not HOST:PORT (like 127.0.0.1:9464 or [::]:9464)")
    return host or "0.0.0.0", int(port)


class Endpoint(ThreadingHTTPServer):
    """``/metrics`` and ``/healthz`` of one registry, served from a daemon thread until ``close``."""

    daemon_threads = True

    def __init__(self, listen: str, registry: CollectorRegistry, health: Health) -> None:
        host, port = address(listen)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise ValueError(f"--metrics-listen {listen}: {exc.strerror or exc}") from exc
        self.registry = registry
        self.health = health
        self.thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            try:
                problem = self.server.health()
            except Exception as exc:  # a broken check is an unhealthy process, never a dropped connection
                problem = f"health check failed: {exc}"
            text = "ok" if problem is None else " ".join(problem.split())
            self._answer(200 if problem is None else 503, f"{text}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._answer(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)
