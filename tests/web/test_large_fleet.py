"""A large fleet on the map: 1,000 hosts and 10,000 edges, answered by a stand-in for the server (the
browser's requests are answered from the package's static folder and from generated JSON), so that this
runs without root or a database: hosts folded by default, every edge drawn with the contract's
attributes, outside endpoints in their own group, and hosts that stay put when one is unfolded."""

from __future__ import annotations

import json
import random
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.web.conftest import visit
from tests.web.test_static import STATIC

BASE = "http://sockfleet.test"
PAGES = {"/": "map.html", "/diff": "diff.html", "/ports": "ports.html", "/audit": "audit.html", "/host": "host.html"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
POLICY = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'"
HOSTS = 1000
EDGES = 10_000
OUTSIDE = ("203.0.113.7", "198.51.100.20")


def fleet() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pick = random.Random(7)
    hosts = [
        {"host": f"node-{i:04d}", "host_id": f"id-{i}", "addresses": f"10.1.{i // 256}.{i % 256}", "status": "live"}
        for i in range(HOSTS)
    ]
    edges = []
    for n in range(EDGES):
        client, server = pick.choice(hosts)["host"], pick.choice(hosts)["host"]
        outside = n % 500 == 0
        edges.append(
            {
                "proto": pick.choice(("tcp", "tcp", "udp")),
                "client_host": client,
                "client_address": None,
                "client_process": f"client{pick.randrange(4)}",
                "server_host": None if outside else server,
                "server_address": OUTSIDE[n % 2] if outside else "10.1.0.1",
                "server_port": pick.choice((80, 443, 5432, 6379)),
                "server_process": None if outside else f"server{pick.randrange(3)}",
                "connections": pick.randrange(1, 9),
                "short_lived": 0,
                "client_bytes": None,
                "server_bytes": None,
                "first_seen": None,
                "last_seen": None,
                "direction": "listener",
            }
        )
    return hosts, edges


@pytest.fixture
def large(page: Page) -> tuple[Page, list[dict[str, Any]]]:
    hosts, edges = fleet()
    answers = {
        "hosts": json.dumps(hosts),
        "talks": json.dumps(edges),
        "ports": "[]",
        "range": json.dumps(
            {"first": "2026-12-01T00:00:00Z", "last": "2026-12-02T00:00:00Z", "now": "2026-12-02T00:00:05Z"}
        ),
    }

    def answer(route: Route) -> None:
        path = urlsplit(route.request.url).path
        headers = {"content-security-policy": POLICY}
        if path.startswith("/api/v1/"):
            route.fulfill(status=200, headers=headers, content_type="application/json", body=answers[path[8:]])
        elif path in PAGES or path.startswith("/static/"):
            file = STATIC / (PAGES[path] if path in PAGES else path.removeprefix("/static/"))
            route.fulfill(status=200, headers=headers, content_type=TYPES[file.suffix], body=file.read_bytes())
        else:
            route.fulfill(status=404, body="not found")

    page.route(f"{BASE}/**", answer)
    return page, edges


def test_a_large_fleet_is_folded_and_every_edge_is_drawn(large: tuple[Page, list[dict[str, Any]]]) -> None:
    page, edges = large
    visit(page, f"{BASE}/")
    expect(page.locator("[data-host]")).to_have_count(HOSTS)
    expect(page.locator('[data-host]:not([data-folded="true"])')).to_have_count(0)
    # A folded host's processes are one end: one arrow per (proto, client, server, port).
    arrows = {(e["proto"], e["client_host"], e["server_host"] or e["server_address"], e["server_port"]) for e in edges}
    expect(page.locator("[data-edge]")).to_have_count(len(arrows))
    drawn = page.locator("[data-edge]").evaluate_all(
        "edges => edges.map(e => [e.dataset.proto, e.dataset.clientHost, e.dataset.serverHost, e.dataset.serverPort])"
    )
    assert {(p, c, s, int(port)) for p, c, s, port in drawn if s} == {a for a in arrows if a[2] not in OUTSIDE}
    assert {(p, c, int(port)) for p, c, s, port in drawn if not s} == {
        (a[0], a[1], a[3]) for a in arrows if a[2] in OUTSIDE
    }
    expect(page.locator("[data-outside]")).to_have_count(1)


def test_unfolding_a_host_keeps_the_others_in_place(large: tuple[Page, list[dict[str, Any]]]) -> None:
    page, _ = large
    visit(page, f"{BASE}/")
    first = page.locator('[data-host="node-0000"] .host-head-box').bounding_box()
    page.locator('[data-host="node-0100"] .host-head').click()
    expect(page).to_have_url(re.compile(r"[?&]open=node-0100$"))
    opened = page.locator('[data-host="node-0100"]')
    expect(opened).not_to_have_attribute("data-folded", "true")
    expect(opened.locator("[data-process]").first).to_be_attached()
    assert page.locator('[data-host="node-0000"] .host-head-box').bounding_box() == first
