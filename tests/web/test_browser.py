"""The web page in a real browser: Debian's Chromium driven by Playwright, against ``sockfleet web`` on a
database filled by a real collector and real agents on hosts in network namespaces.

The fleet (built once for the module, as in tests/collector/test_multihost.py): host-a serves TCP 8080,
UDP 5353 (host-b's ``dnscli`` calls it) and a Unix socket (its own ``appcli`` calls it), and after
``past`` a process named like markup listens on 7070;
on host-b, ``webcli`` keeps a connection to it, ``tempcli`` holds one until after the moment ``past``,
and ``telnetd`` listens on port 2323, which the audit policy forbids; ``newsvc`` starts listening on
host-b after ``past``; host-c's agent starts only after ``past`` (so host-c is unknown then), and its
``webcli`` calls host-a too, and its ``extcli`` calls a service outside the fleet (10.77.0.50:9000).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Error, Page, Request, expect

from tests.collector.harness import Web, ask, sockfleet, stamp
from tests.collector.network import ADDRESSES, SWITCH, Network
from tests.conftest import ROOT
from tests.web.conftest import CHROMIUM, visit

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium (Debian's chromium package)"),
]

MARKUP = "<i>evil</i>"  # a process name that markup would take for an element (at most 15 bytes)
POLICY = """\
[[rule]]
hosts = "*"
forbid = [2323]
"""


@dataclass(frozen=True)
class Fleet:
    base: str  # the web page's address, http://127.0.0.1:PORT
    db_url: str
    past: str  # tempcli's connection open, newsvc not listening, host-c not yet reporting
    later: str  # tempcli's connection closed, newsvc listening, host-c reporting


def edges(db_url: str, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ask(db_url, "talks", "--format", "json", *args).stdout)
    return rows


def has_edge(db_url: str, client: str, process: str, *args: str) -> bool:
    return any(e["client_host"] == client and e["client_process"] == process for e in edges(db_url, *args))


def wait_until(check: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_agent(network: Network, host: str) -> None:
    network.run(
        network.hosts[host],
        *sockfleet("agent", "run", "--collector", f"{SWITCH}:7050", "--insecure", "--interval", "0.5s"),
        "--namespaces",
        "current",
        "--host",
        host,
        ready=False,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("web")
    db_url = f"sqlite:///{tmp / 'fleet.db'}"
    network = Network()
    web: Web | None = None
    try:
        collector = network.run(
            network.switch,
            *sockfleet("collector", "serve", "--insecure", "--allow-anonymous", "--listen", f"{SWITCH}:7050"),
            "--db",
            db_url,
            ready=False,
        )
        assert collector.stderr is not None
        assert "listening on" in collector.stderr.readline()
        start_agent(network, "host-a")
        start_agent(network, "host-b")
        a = ADDRESSES["host-a"]
        network.process("host-a", "websvc", "tcp-listen", "0.0.0.0", "8080")
        network.process("host-a", "dnssvc", "udp-listen", "0.0.0.0", "5353")
        network.process("host-a", "appsvc", "unix-listen", str(tmp / "app.sock"))
        network.process("host-a", "appcli", "unix-connect", str(tmp / "app.sock"))
        network.process("outside", "extsvc", "tcp-listen", "0.0.0.0", "9000")
        network.process("host-b", "dnscli", "udp-connect", a, "5353")
        network.process("host-b", "telnetd", "tcp-listen", "0.0.0.0", "2323")
        network.process("host-b", "webcli", "tcp-connect", a, "8080", "1")
        tempcli = network.process("host-b", "tempcli", "tcp-connect", a, "8080", "1")
        wait_until(lambda: has_edge(db_url, "host-b", "tempcli"), "host-b's connections")
        time.sleep(1)
        past = stamp()
        time.sleep(1)
        network.stop(tempcli)
        network.process("host-b", "newsvc", "tcp-listen", "0.0.0.0", "9090")
        network.process("host-a", MARKUP, "tcp-listen", "0.0.0.0", "7070")
        start_agent(network, "host-c")
        network.process("host-c", "webcli", "tcp-connect", a, "8080", "1")
        network.process("host-c", "extcli", "tcp-connect", ADDRESSES["outside"], "9000", "1")
        wait_until(
            lambda: (
                has_edge(db_url, "host-c", "webcli")
                and has_edge(db_url, "host-c", "extcli")
                and not has_edge(db_url, "host-b", "tempcli")
            ),
            "host-c's connection, and tempcli's closed",
        )
        wait_until(lambda: {7070, 9090} <= {r["local_port"] for r in _ports(db_url)}, "the new listeners")
        time.sleep(1)
        later = stamp()
        policy = tmp / "policy.toml"
        policy.write_text(POLICY)
        web = Web("--db", db_url, "--policy", str(policy))
        wait_until(lambda: answering(f"{web.base}/api/v1/range"), "the web page", timeout=60)
        yield Fleet(web.base, db_url, past, later)
    finally:
        if web is not None:
            web.stop()
        network.close()


def _ports(db_url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ask(db_url, "ports", "--format", "json").stdout)
    return rows


def edge(client: str, server: str, port: int, proto: str = "tcp", process: str | None = None) -> str:
    """The contract's selector for an edge element."""
    selector = (
        f'[data-edge][data-client-host="{client}"][data-server-host="{server}"]'
        f'[data-server-port="{port}"][data-proto="{proto}"]'
    )
    return selector + (f'[data-client-process="{process}"]' if process is not None else "")


TEMP_EDGE = edge("host-b", "host-a", 8080, process="tempcli")
C_EDGE = edge("host-c", "host-a", 8080, process="webcli")


def test_map_at_a_past_moment_shows_an_edge_gone_now(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/?at={fleet.past}")
    expect(page.locator(TEMP_EDGE)).to_have_count(1)
    expect(page.locator(edge("host-b", "host-a", 8080, process="webcli"))).to_have_count(1)
    for host in ("host-a", "host-b"):
        expect(page.locator(f'[data-host="{host}"]')).to_have_attribute("data-status", "observed")
    if os.environ.get("SOCKFLEET_SCREENSHOT"):  # for the README: the map with one edge's tooltip
        page.set_viewport_size({"width": 1280, "height": 600})
        page.locator("#fit").click()
        middle = page.locator(TEMP_EDGE).evaluate(
            "e => { const p = e.getPointAtLength(e.getTotalLength() / 2).matrixTransform(e.getScreenCTM());"
            " return [p.x, p.y]; }"
        )
        page.mouse.move(middle[0], middle[1])
        expect(page.locator("#tooltip")).to_be_visible()
        page.screenshot(path=str(ROOT / os.environ["SOCKFLEET_SCREENSHOT"]))

    visit(page, f"{fleet.base}/")
    expect(page.locator(C_EDGE)).to_have_count(1)
    expect(page.locator(TEMP_EDGE)).to_have_count(0)
    expect(page.locator('[data-host="host-a"]')).to_have_attribute("data-status", "live")


def test_unix_pairs_sit_inside_a_host_and_outside_endpoints_apart(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/")
    unix = page.locator('[data-edge][data-proto="unix"][data-client-process="appcli"]')
    expect(unix).to_have_attribute("data-client-host", "host-a")
    expect(unix).to_have_attribute("data-server-host", "host-a")
    expect(unix).to_have_attribute("data-server-port", "")
    expect(page.locator(edge("host-b", "host-a", 5353, proto="udp", process="dnscli"))).to_have_count(1)
    outward = page.locator('[data-edge][data-client-host="host-c"][data-server-host=""][data-server-port="9000"]')
    expect(outward).to_have_count(1)
    expect(page.locator(f'[data-outside] [data-address="{ADDRESSES["outside"]}"]')).to_have_count(1)


def test_names_from_the_data_are_shown_as_text(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/")
    node = page.locator(f'[data-host="host-a"] [data-process="{MARKUP}"]')
    expect(node).to_contain_text(MARKUP)
    visit(page, f"{fleet.base}/ports?host=host-a")
    expect(page.locator('#ports tr[data-port="7070"]')).to_contain_text(MARKUP)
    expect(page.locator("i")).to_have_count(0)


def test_a_host_not_observed_then_is_shown_unknown(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/?at={fleet.past}")
    host_c = page.locator('[data-host="host-c"]')
    expect(host_c).to_have_count(1)
    expect(host_c).to_have_attribute("data-status", "unknown")
    expect(host_c.locator(".host-status")).to_have_text("unknown")
    expect(page.locator(C_EDGE)).to_have_count(0)

    visit(page, f"{fleet.base}/host?host=host-c&at={fleet.past}")
    expect(page.locator("#title [data-status]")).to_have_attribute("data-status", "unknown")


def place(page: Page, host: str) -> tuple[float, float]:
    box = page.locator(f'[data-host="{host}"] .host-head-box').bounding_box()
    assert box is not None
    return box["x"], box["y"]


def test_moving_the_time_control_changes_the_map(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/?at={fleet.past}")
    expect(page.locator(TEMP_EDGE)).to_have_count(1)
    before = {host: place(page, host) for host in ("host-a", "host-b", "host-c")}
    page.locator("#slider").press("End")  # to the last moment the database holds
    expect(page).not_to_have_url(re.compile(re.escape(fleet.past.replace(":", "%3A"))))
    expect(page).to_have_url(re.compile(r"[?&]at="))
    expect(page.locator(TEMP_EDGE)).to_have_count(0)
    expect(page.locator(C_EDGE)).to_have_count(1)
    expect(page.locator('[data-host="host-c"]')).to_have_attribute("data-status", "observed")
    assert {host: place(page, host) for host in before} == before  # hosts stay put as the moment moves

    page.go_back()  # the moment is in the URL: back shows the past again
    expect(page.locator(TEMP_EDGE)).to_have_count(1)

    page.locator("#now").click()
    expect(page).not_to_have_url(re.compile(r"[?&]at="))
    expect(page.locator('[data-host="host-c"]')).to_have_attribute("data-status", "live")
    expect(page.locator(TEMP_EDGE)).to_have_count(0)


def test_a_window_shows_everything_that_talked_within_it(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/?since={fleet.past}&until={fleet.later}")
    expect(page.locator(TEMP_EDGE)).to_have_count(1)
    expect(page.locator(C_EDGE)).to_have_count(1)
    expect(page.locator('[data-host="host-c"]')).not_to_have_attribute("data-status", "unknown")

    page.locator("#slider").press("Home")  # the window moves back to the start of the history, its length kept
    expect(page).to_have_url(re.compile(r"[?&]until="))
    expect(page).not_to_have_url(re.compile(re.escape(fleet.later.replace(":", "%3A"))))
    expect(page.locator(C_EDGE)).to_have_count(0)


def test_edges_carry_their_numbers_on_hover(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/")
    page.locator(C_EDGE).dispatch_event("mouseover")
    tooltip = page.locator("#tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("host-c / webcli → host-a / websvc")
    expect(tooltip).to_contain_text("connections: 1")
    expect(tooltip).to_contain_text("short-lived:")
    expect(tooltip).to_contain_text("bytes sent by the client")


def test_filters_narrow_the_map_and_stay_in_the_url(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/")
    page.locator("#filters input[name=host]").fill("host-c")
    page.locator("#filters button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"[?&]host=host-c"))
    expect(page.locator(C_EDGE)).to_have_count(1)
    expect(page.locator(edge("host-b", "host-a", 8080))).to_have_count(0)
    ends = page.locator("[data-edge]").evaluate_all(
        "edges => edges.map(e => [e.dataset.clientHost, e.dataset.serverHost])"
    )
    assert ends and all("host-c" in pair for pair in ends)
    expect(page.locator('[data-host="host-b"]')).to_have_count(1)  # hosts stay where they are

    visit(page, f"{fleet.base}/?port=8080")
    ports = page.locator("[data-edge]").evaluate_all("edges => edges.map(e => e.dataset.serverPort)")
    assert ports and set(ports) == {"8080"}


def test_a_host_folds_when_clicked(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/")
    host_a = page.locator('[data-host="host-a"]')
    expect(host_a.locator('[data-process="websvc"]')).to_have_count(1)
    host_a.locator(".host-head").click()
    expect(page).to_have_url(re.compile(r"[?&]open="))
    expect(host_a).to_have_attribute("data-folded", "true")
    expect(host_a.locator('[data-process="websvc"]')).to_have_count(0)
    expect(page.locator(edge("host-c", "host-a", 8080))).to_have_count(1)  # its edges end on the host


def test_the_diff_marks_what_closed_and_opened(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/diff?from={fleet.past}&to={fleet.later}")
    closed = page.locator(TEMP_EDGE + '[data-change="closed"]')
    expect(closed).to_have_count(1)
    expect(closed).to_have_class(re.compile(r"\bclosed\b"))
    opened = page.locator('.listener-change[data-listener-host="host-b"][data-local-port="9090"]')
    expect(opened).to_have_attribute("data-change", "opened")
    expect(page.locator('#changes tr[data-change="closed"][data-kind="edge"]')).to_have_count(1)


def test_the_audit_lists_a_forbidden_listener(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/audit")
    row = page.locator('tr[data-severity="violation"][data-row-host="host-b"][data-port="2323"]')
    expect(row).to_have_count(1)
    expect(row).to_contain_text("forbidden port")
    expect(row).to_contain_text("telnetd")


def test_the_ports_table_sorts(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/ports?host=host-b")
    page.locator('button[data-sort="local_port"]').click()
    expect(page).to_have_url(re.compile(r"[?&]sort=local_port"))
    column = page.locator('#ports td[data-column="local_port"]')
    expect(column.first).to_have_text("2323")
    page.locator('button[data-sort="local_port"]').click()
    expect(page).to_have_url(re.compile(r"[?&]sort=-local_port"))
    expect(column.first).to_have_text("9090")
    expect(page.locator('tr[data-port="2323"]')).to_have_attribute("data-exposed", "yes")


def test_a_second_click_before_the_redraw_reverses_the_order(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/ports?host=host-b")
    # Answers now come slowly, so both clicks land on the table drawn before either.
    page.evaluate(
        "() => { const f = window.fetch; window.fetch = (...a) => new Promise((r) => setTimeout(r, 400)).then(() => f(...a)); }"
    )
    button = page.locator('button[data-sort="local_port"]')
    button.click()
    button.click()
    expect(page).to_have_url(re.compile(r"[?&]sort=-local_port"))
    expect(page.locator('#ports td[data-column="local_port"]').first).to_have_text("9090")


def test_the_host_page(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/host?host=host-a")
    expect(page.locator("#facts")).to_contain_text(ADDRESSES["host-a"])
    expect(page.locator('#listeners tr[data-port="8080"]')).to_contain_text("websvc")
    expect(page.locator("#history tr[data-state]").first).to_be_visible()
    expect(page.locator("#timeline rect.bar").first).to_be_attached()


def test_a_bad_parameter_shows_the_commands_message(fleet: Fleet, page: Page) -> None:
    visit_error = f"{fleet.base}/?at=yesterday-ish"
    page.goto(visit_error)
    expect(page.locator("body")).to_have_attribute("data-state", "error")
    expect(page.locator("#error")).to_contain_text("is not a time")


def test_navigation_keeps_the_moment(fleet: Fleet, page: Page) -> None:
    visit(page, f"{fleet.base}/?at={fleet.past}")
    page.locator('#nav a[data-page="ports"]').click()
    expect(page.locator("body")).to_have_attribute("data-state", "ready")
    assert page.url.startswith(f"{fleet.base}/ports?")
    expect(page.locator("#filters input[name=at]")).to_have_value(fleet.past)


def test_no_request_leaves_the_server_and_inline_script_is_blocked(fleet: Fleet, page: Page) -> None:
    requests: list[str] = []
    console: list[str] = []

    def record(request: Request) -> None:
        requests.append(request.url)

    def said(message: ConsoleMessage) -> None:
        if message.type == "error":
            console.append(message.text)

    page.on("request", record)
    page.on("console", said)
    for path in ("/", f"/?at={fleet.past}", "/diff", "/ports", "/audit", "/host?host=host-a"):
        response = page.goto(fleet.base + path)
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        markup = response.text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", markup), f"{path}: inline script"
        assert not re.search(r"\sstyle=", markup), f"{path}: inline style"
        expect(page.locator("body")).to_have_attribute("data-state", "ready")
    assert requests and all(url.startswith(fleet.base + "/") for url in requests), requests
    assert console == [], console  # our own assets load and run under the policy

    with page.expect_console_message(lambda m: "Content Security Policy" in m.text), contextlib.suppress(Error):
        page.add_script_tag(content="window.sockfleetInline = 1;")  # refused outright is as good as quietly
    assert page.evaluate("window.sockfleetInline") is None
