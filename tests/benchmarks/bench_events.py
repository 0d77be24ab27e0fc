"""Benchmark: what listening to socket-destroy events costs the agent, and whether it loses any.

    python -m tests.benchmarks.bench_events --rates 1000,10000 --seconds 30

For each rate C two caller processes make C short TCP connections per second in all to a server on loopback
(each sends 100 bytes and gets 100) for the given time, while a scanning loop runs as the agent's does
(a scan every ``--interval``, events folded between scans), in a process of its own:

* ``events``: scans and the destroy-event listener;
* ``scans only``: the same loop without the listener, the peer in the same run.

It prints, for each, the CPU share of one core, peak memory, and for ``events`` the connections found
versus made (server ends and client ends) and the times the kernel dropped events.  The ``extra`` line is
the listener's own cost: the CPU share of ``events`` less that of ``scans only``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def scanning(events: bool, seconds: float, interval: float, port: int) -> dict[str, Any]:
    """The agent's loop for ``seconds``: what it found on ``port``, and what it cost."""
    from sockfleet.agent.events import Events
    from sockfleet.agent.snapshot import Scanner

    scanner = Scanner(scope="current")
    listener = Events() if events else None
    found = {"served": 0, "calling": 0, "lost": 0, "overflowed": 0}
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            if listener is not None:
                listener.hold()
                listener.learn(scanner.snapshot())
                listener.watch(scanner.spaces)
                _count(listener.take(), port, found)
            else:
                scanner.snapshot()
            time.sleep(interval)
        if listener is not None:
            time.sleep(0.5)
            _count(listener.take(), port, found)
    finally:
        if listener is not None:
            listener.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    return {**found, "cpu_seconds": cpu, "wall_seconds": time.monotonic() - started, "max_rss_kb": usage.ru_maxrss}


def _count(taken: Any, port: int, found: dict[str, int]) -> None:
    found["lost"] += taken.lost
    found["overflowed"] += taken.overflowed
    for key, counts in taken.flows.items():
        if key[2] == "s" and key[5] == port:
            found["served"] += counts.connections
        elif key[2] == "c" and key[7] == port:
            found["calling"] += counts.connections


def load(rate: int, seconds: float, server: socket.socket, callers: int = 2) -> int:
    """``rate`` short connections a second to ``server`` for ``seconds``, from ``callers`` processes (one
    Python process makes about 4,000 a second here); the number made."""
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(100)
                conn.sendall(b"a" * 100)

    thread = threading.Thread(target=serve)
    thread.start()
    host, port = server.getsockname()[:2]
    command = [sys.executable, "-m", "tests.benchmarks.bench_events", "--caller", f"{host}:{port}",
               "--rates", str(rate / callers), "--seconds", str(seconds)]  # fmt: skip
    try:
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(callers)]
        return sum(int(proc.communicate(timeout=seconds + 60)[0]) for proc in procs)
    finally:
        stop.set()
        thread.join()


def call(address: str, rate: float, seconds: float) -> int:
    """One caller: ``rate`` connections a second for ``seconds``, each sending 100 bytes and reading 100."""
    host, port = address.rsplit(":", 1)
    made, started = 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if made >= rate * elapsed:
            time.sleep(0.001)
            continue
        with socket.create_connection((host, int(port))) as client:
            client.sendall(b"r" * 100)
            client.recv(100)
        made += 1
    return made


def run(rate: int, seconds: float, interval: float, events: bool) -> dict[str, Any]:
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = server.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.bench_events", "--child", "events" if events else "plain",
         "--seconds", str(seconds + 2 * interval + 1), "--interval", str(interval), "--port", str(port)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        time.sleep(interval + 1)  # the first scan sees the listener
        made = load(rate, seconds, server)
        out, _ = child.communicate(timeout=seconds + 120)
    finally:
        if child.poll() is None:
            child.kill()
        server.close()
    result: dict[str, Any] = json.loads(out)
    result["made"] = made
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,10000", help="connections per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between scans")
    parser.add_argument("--child", choices=("events", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--caller", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.caller:
        print(call(args.caller, float(args.rates), args.seconds))
        return 0
    if args.child:
        print(json.dumps(scanning(args.child == "events", args.seconds, args.interval, args.port)))
        return 0
    if os.geteuid() != 0:
        print("run as root: the agent reads every process's sockets", file=sys.stderr)
        return 2
    for rate in (int(r) for r in args.rates.split(",")):
        with_events = run(rate, args.seconds, args.interval, events=True)
        plain = run(rate, args.seconds, args.interval, events=False)
        made = with_events["made"]
        print(
            f"rate={rate}/s seconds={args.seconds:g} interval={args.interval:g}s made={made} ({made / args.seconds:.0f}/s)"
        )
        share = {}
        for name, r in (("events", with_events), ("scans only", plain)):
            share[name] = 100 * r["cpu_seconds"] / r["wall_seconds"]
            print(f"  {name:<11} cpu {share[name]:6.2f}% of a core  peak {r['max_rss_kb'] / 1024:6.1f} MB")
        print(f"  extra       cpu {share['events'] - share['scans only']:6.2f}% of a core for the listener")
        print(
            f"  found       served {with_events['served']} calling {with_events['calling']} of {made} made; "
            f"kernel dropped events {with_events['lost']} time(s); overflowed {with_events['overflowed']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
