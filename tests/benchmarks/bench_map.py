"""Benchmark: the map page for a large fleet, in headless Chromium, against bare SVG of the same size.

    python -m tests.benchmarks.bench_map --hosts 1000 --sockets 60   # about 10,000 edges, as the issue asks
    python -m tests.benchmarks.bench_map --hosts 100 --sockets 60    # a quicker look

Builds the history of ``bench_history`` (SQLite: every host calls the listeners of 8 others from two
client processes), starts a real ``sockfleet web`` on it and opens the map at the middle moment in
Debian's Chromium, ``--runs`` times: from navigation to the page marking itself ready
(``body[data-state=ready]``: its questions answered and the map drawn), split into the time until the
last API answer and the drawing after it.  The peer, in the same browser and run: a page that puts one
SVG group per host and one path per edge into the document at once, with no layout, so the ratio is
what the map's layout and drawing cost over the browser's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

from playwright.sync_api import Page, sync_playwright

from sockfleet.collector import db
from sockfleet.collector.times import rfc3339
from tests.benchmarks import bench_history
from tests.collector.harness import Web
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

BARE = """
const [hosts, edges] = arguments_;
const started = performance.now();
const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
svg.setAttribute("width", "1400"); svg.setAttribute("height", "900");
const columns = Math.ceil(Math.sqrt(hosts));
for (let i = 0; i < hosts; i++) {
  const g = document.createElementNS(svg.namespaceURI, "g");
  const r = document.createElementNS(svg.namespaceURI, "rect");
  r.setAttribute("x", (i % columns) * 40); r.setAttribute("y", Math.floor(i / columns) * 30);
  r.setAttribute("width", 30); r.setAttribute("height", 20);
  g.appendChild(r); svg.appendChild(g);
}
for (let e = 0; e < edges; e++) {
  const p = document.createElementNS(svg.namespaceURI, "path");
  const a = e % hosts, b = (e * 7919) % hosts;
  p.setAttribute("d", `M${(a % columns) * 40} ${Math.floor(a / columns) * 30} C 0 0, 100 100, ${(b % columns) * 40} ${Math.floor(b / columns) * 30}`);
  p.setAttribute("stroke", "#36c"); p.setAttribute("fill", "none");
  svg.appendChild(p);
}
document.body.appendChild(svg);
await new Promise(requestAnimationFrame);
await new Promise(requestAnimationFrame);
return performance.now() - started;
"""


def open_map(page: Page, address: str) -> tuple[float, float, int, int]:
    """Seconds from navigation to ready, seconds of that after the last API answer, hosts and edges drawn."""
    started = time.perf_counter()
    page.goto(address)
    page.wait_for_selector("body[data-state=ready]", timeout=600_000)
    total = time.perf_counter() - started
    answered = page.evaluate(
        "Math.max(...performance.getEntriesByType('resource').filter(r => r.name.includes('/api/'))"
        ".map(r => r.responseEnd))"
    )
    drawing = max(0.0, total - answered / 1000)
    return total, drawing, page.locator("[data-host]").count(), page.locator("[data-edge]").count()


def bare(page: Page, hosts: int, edges: int) -> float:
    page.set_content("<html><body></body></html>")
    script = f"async () => {{ const arguments_ = {json.dumps([hosts, edges])}; {BARE} }}"
    return float(page.evaluate(script)) / 1000


def bench(url: str, args: argparse.Namespace) -> None:
    engine = db.engine(url)
    db.migrate(engine)
    rows = bench_history.load(engine, args.hosts, args.sockets, args.hours)
    engine.dispose()
    middle = rfc3339(bench_history.START + timedelta(hours=args.hours / 2))
    with Web("--db", url, "--log-level", "warning") as server:
        status, _, body = server.get(f"/api/v1/talks?at={middle}")
        assert status == 200, body
        edges = len(json.loads(body))
        print(f"{args.hosts} hosts, {rows:,} socket rows, {edges:,} edges at {middle}", flush=True)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                runs = [open_map(page, f"{server.base}/?at={middle}") for _ in range(args.runs)]
                peer = statistics.median(bare(page, args.hosts, edges) for _ in range(args.runs))
            finally:
                browser.close()
        total = statistics.median(r[0] for r in runs)
        drawing = statistics.median(r[1] for r in runs)
        drawn_hosts, drawn_edges = runs[-1][2], runs[-1][3]
        print(f"  map ready          {total * 1000:8.0f} ms  (median of {args.runs})", flush=True)
        print(f"  of which drawing   {drawing * 1000:8.0f} ms  ({drawn_hosts:,} hosts, {drawn_edges:,} edge elements)")
        print(
            f"  bare SVG, same size {peer * 1000:7.0f} ms  -> drawing is {drawing / peer:.1f}x the bare SVG", flush=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=60)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (Debian's chromium package)", file=sys.stderr)
        return 2
    with TemporaryDirectory() as folder:
        bench(f"sqlite:///{Path(folder) / 'fleet.db'}", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
