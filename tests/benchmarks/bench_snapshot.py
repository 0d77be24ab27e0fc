"""Benchmark: the agent's scan against ``ss -tuanxp`` and ``psutil.net_connections`` on the same sockets.

    python -m tests.benchmarks.bench_snapshot --connections 1000,10000,100000

For each N it opens N established TCP connections over loopback (spread over
several holder processes, each with its own 127.0.0.x listener), plus UDP and
Unix sockets, then times in the same run:

* ``cold``: a new ``sockfleet agent snapshot`` process (owners included);
* ``warm``: one scan repeated inside a long-running scanner (owners cached);
* ``ss -tuanxp`` and ``psutil.net_connections("all")`` as peers.

It prints wall time, CPU time and peak memory (max RSS) of each, and the
ratio of each wall time to ``ss -tuanxp``.  Every figure is the median of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PER_HOLDER = 8000  # connections per holder process: 16,000 descriptors, under a 20,000 hard limit
EXTRA_UDP = 50
EXTRA_UNIX = 50


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def hold(count: int, address: str) -> None:
    """Holder process: ``count`` connections to its own listener, some UDP and Unix sockets; waits on stdin."""
    raise_fd_limit()
    listener = socket.create_server((address, 0), backlog=4096)
    keep: list[socket.socket] = [listener]
    for start in range(0, count, 1000):
        clients = [socket.create_connection(listener.getsockname()) for _ in range(min(1000, count - start))]
        keep.extend(clients)
        keep.extend(listener.accept()[0] for _ in clients)
    for _ in range(EXTRA_UDP):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((address, 0))
        keep.append(udp)
    for _ in range(EXTRA_UNIX):
        keep.extend(socket.socketpair())
    print("ready", flush=True)
    sys.stdin.read()
    # Close with RST, not FIN: no TIME_WAIT sockets are left to skew the next round.
    linger = struct.pack("ii", 1, 0)
    for sock in keep:
        if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.close()


class Workload:
    """N connections spread over holder processes; closed when the workload ends."""

    def __init__(self, connections: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        holders = max(1, -(-connections // PER_HOLDER))
        for index in range(holders):
            count = connections // holders + (1 if index < connections % holders else 0)
            address = f"127.0.{index // 250}.{index % 250 + 1}"
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.benchmarks.bench_snapshot", "--hold", str(count), address],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                    text=True,
                )
            )
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a socket holder exited with status {proc.wait()}")

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait()
            proc.stdout.close()


def measure(command: list[str]) -> dict[str, float]:
    """Wall and CPU seconds and peak memory (MB) of one run of ``command``, its output thrown away."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    errors = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {errors}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "mem": usage.ru_maxrss / 1024}


def warm_scans(repeat: int) -> None:
    """Inside one process: a first scan, then ``repeat`` warm ones; prints the median warm figures."""
    from sockfleet.agent.snapshot import Scanner

    scanner = Scanner(scope="current")
    scanner.snapshot()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        scanner.snapshot()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": statistics.median(walls), "cpu": statistics.median(cpus), "mem": peak}))


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def bench(connections: int, repeat: int) -> dict[str, dict[str, float]]:
    sockfleet = [sys.executable, "-m", "sockfleet", "agent", "snapshot", "--namespaces", "current"]
    peers = {
        "sockfleet cold": sockfleet,
        "ss -tuanxp": ["ss", "-tuanxp"],
        "psutil": [sys.executable, "-c", "import psutil; psutil.net_connections('all')"],
    }
    workload = Workload(connections)
    try:
        results = {name: median_of([measure(command) for _ in range(repeat)]) for name, command in peers.items()}
        warm = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.bench_snapshot", "--warm", str(max(repeat, 3))],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        results["sockfleet warm"] = json.loads(warm.stdout)
    finally:
        workload.close()
    return results


def report(connections: int, results: dict[str, dict[str, float]]) -> str:
    ss = results["ss -tuanxp"]["wall"]
    lines = [f"connections={connections:,}", f"  {'':16} {'wall ms':>9} {'cpu ms':>9} {'peak MB':>8} {'wall / ss':>10}"]
    for name in ("sockfleet cold", "sockfleet warm", "ss -tuanxp", "psutil"):
        r = results[name]
        wall, cpu = r["wall"] * 1000, r["cpu"] * 1000
        lines.append(f"  {name:16} {wall:9.1f} {cpu:9.1f} {r['mem']:8.1f} {r['wall'] / ss:9.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,10000,100000", help="comma-separated counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median is shown")
    parser.add_argument("--hold", nargs=2, metavar=("COUNT", "ADDRESS"), help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        hold(int(args.hold[0]), args.hold[1])
        return 0
    if args.warm:
        warm_scans(args.warm)
        return 0
    raise_fd_limit()
    for connections in (int(n) for n in args.connections.split(",")):
        print(report(connections, bench(connections, args.repeat)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
