"""Benchmark: the agent's scan against ``ss -tuanxp`` and ``psutil.net_connections`` on the same sockets.

    python -m tests.benchmarks.bench_snapshot --connections 1000,10000,100000

For each N it opens N established TCP connections over loopback (spread over
several holder processes, each with its own 127.0.0.x listener), plus UDP and
Unix sockets, then times in the same run:

* ``cold``: a new ``sockfleet agent snapshot`` process (owners included), once per output format
  (table, JSON, CSV), its output thrown away;
* ``warm``: one scan repeated inside a long-running scanner (owners cached);
* ``ss -tuanxp`` and ``psutil.net_connections("all")`` as peers.

It prints wall time, CPU time and peak resident memory of each (read by GNU time, so that this
process's own memory does not count in), and the ratio of each wall time to ``ss -tuanxp``.  Every figure is the median of
``--repeat`` runs.

At the counts listed in ``--run-at`` it also runs ``sockfleet agent run`` on the same sockets, streaming
to a bare gRPC server that acknowledges every scan (plain text), and once its first scan is acknowledged,
measures over ``--run-intervals`` intervals its resident memory (now and at its peak) and its CPU time
per interval, as a share of one core.  The resident memory is then split into anonymous memory (the
agent's own: Python objects, malloc, library data) and file-backed pages (the code of the interpreter,
gRPC and the libraries they load, shared with every process that maps them), with PSS, USS and the number
of threads beside it; and it is set against its floor, measured in the same run: the resident memory of a
``python`` that has only imported gRPC, protobuf and the wire modules (``sockfleet.v1``).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# A process started from this one counts this one's memory in its peak (Linux keeps the larger of the two
# across exec), so peaks are read by GNU time, a small process that starts the command itself.
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measure(command: list[str]) -> dict[str, float]:
    """Wall and CPU seconds and peak memory (MB) of one run of ``command``, its output thrown away."""
    timed = [TIME, "-f", "peak %M", *command] if TIME else command
    started = time.perf_counter()
    proc = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    errors = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {errors}")
    last = errors.rstrip().rpartition("\n")[2]
    peak = int(last.split()[1]) if TIME and last.startswith("peak ") else usage.ru_maxrss
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "mem": peak / 1024}


def peak_resident() -> float:
    """This process's peak resident memory (MB) since it started its program (not before, as ru_maxrss)."""
    with open("/proc/self/status", encoding="ascii") as lines:
        for line in lines:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    peak = peak_resident()
    print(json.dumps({"wall": statistics.median(walls), "cpu": statistics.median(cpus), "mem": peak}))


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def proc_figures(pid: int) -> dict[str, float]:
    """CPU seconds so far, resident and peak resident memory (MB) of a running process; the resident memory's
    anonymous and file-backed parts, its PSS and USS (MB), and its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = _kilobytes(f"/proc/{pid}/status")
    rollup = _kilobytes(f"/proc/{pid}/smaps_rollup")
    return {
        "cpu": cpu,
        "rss": status["VmRSS"] / 1024,
        "hwm": status["VmHWM"] / 1024,
        "anon": status["RssAnon"] / 1024,
        "file": status["RssFile"] / 1024,
        "pss": rollup["Pss"] / 1024,
        "uss": (rollup["Private_Clean"] + rollup["Private_Dirty"]) / 1024,
        "threads": status["Threads"],
    }


def _kilobytes(path: str) -> dict[str, int]:
    """``Name:   123 kB`` lines of a /proc file (status, smaps_rollup) as {name: 123}; other lines are left out."""
    values = {}
    with open(path, encoding="ascii") as lines:
        for line in lines:
            name, _, value = line.partition(":")
            number = value.split()[:1]
            if number and number[0].isdigit():
                values[name] = int(number[0])
    return values


# What a running agent cannot go below: the interpreter with gRPC, protobuf and the wire modules loaded.
FLOOR = "import grpc, grpc.aio, sockfleet.v1.fleet_pb2_grpc; print(open('/proc/self/status').read())"


def floor_resident() -> float:
    """Resident memory (MB) of a ``python`` that has only imported what a running agent cannot do without."""
    status = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True, cwd=ROOT)
    line = next(line for line in status.stdout.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def acking_collector() -> None:
    """A gRPC server on a free loopback port that acknowledges every scan at once and keeps nothing.

    The agent is what is measured: a collector that stores nothing keeps the figures the agent's own.
    Runs in a process of its own (``--ack``); prints its port, and stops when its standard input closes.
    """
    from concurrent import futures

    import grpc

    from sockfleet.v1 import fleet_pb2 as pb
    from sockfleet.v1 import fleet_pb2_grpc as pb_grpc

    class Acking(pb_grpc.CollectorServicer):
        def Stream(self, requests: Iterator[pb.AgentMessage], context: Any) -> Iterator[pb.CollectorMessage]:
            for message in requests:
                body = message.WhichOneof("body")
                scan = message.snapshot if body == "snapshot" else message.delta if body == "delta" else None
                if scan is not None and not (body == "snapshot" and message.snapshot.more):
                    yield pb.CollectorMessage(ack=pb.Ack(epoch=scan.epoch, seq=scan.seq))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_CollectorServicer_to_server(Acking(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None)


def agent_run(interval: float, intervals: int) -> dict[str, float]:
    """``sockfleet agent run`` streaming to a collector: its memory and CPU share once it is acknowledged."""
    import threading

    server = subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.bench_snapshot", "--ack"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline())
    agent = subprocess.Popen(
        [sys.executable, "-m", "sockfleet", "agent", "run", "--collector", f"127.0.0.1:{port}", "--insecure",
         "--namespaces", "current", "--interval", f"{interval}s", "--host", "bench"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert agent.stderr is not None
        said: list[str] = []
        for line in agent.stderr:
            said.append(line)
            if "connected to the collector" in line:
                break
        else:
            raise RuntimeError(f"the agent exited {agent.wait()}: {''.join(said)}")
        threading.Thread(target=agent.stderr.read, daemon=True).start()  # its log never fills the pipe
        # Count from half an interval after the first scan, over whole intervals.
        time.sleep(interval / 2)
        before = proc_figures(agent.pid)
        time.sleep(interval * intervals)
        after = proc_figures(agent.pid)
    finally:
        agent.terminate()
        agent.wait(30)
        if agent.stderr is not None:
            agent.stderr.close()
        server.stdin.close()
        server.wait(30)
        server.stdout.close()
    cpu = (after["cpu"] - before["cpu"]) / intervals
    return {**after, "cpu": cpu, "share": cpu / interval, "interval": interval, "floor": floor_resident()}


FORMATS = ("table", "json", "csv")


def cold_name(fmt: str) -> str:
    return "sockfleet cold" if fmt == "table" else f"cold --format {fmt}"


def bench(connections: int, repeat: int, run: tuple[float, int] | None = None) -> dict[str, dict[str, float]]:
    sockfleet = [sys.executable, "-m", "sockfleet", "agent", "snapshot", "--namespaces", "current"]
    peers = {
        **{cold_name(fmt): [*sockfleet, "--format", fmt] for fmt in FORMATS},
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
        if run is not None:
            results["agent run"] = agent_run(*run)
    finally:
        workload.close()
    return results


def report(connections: int, results: dict[str, dict[str, float]]) -> str:
    ss = results["ss -tuanxp"]["wall"]
    lines = [f"connections={connections:,}", f"  {'':19} {'wall ms':>9} {'cpu ms':>9} {'peak MB':>8} {'wall / ss':>10}"]
    for name in (*map(cold_name, FORMATS), "sockfleet warm", "ss -tuanxp", "psutil"):
        r = results[name]
        wall, cpu = r["wall"] * 1000, r["cpu"] * 1000
        lines.append(f"  {name:19} {wall:9.1f} {cpu:9.1f} {r['mem']:8.1f} {r['wall'] / ss:9.2f}x")
    run = results.get("agent run")
    if run is not None:
        lines.append(
            f"  agent run every {run['interval']:g}s: {run['rss']:.1f} MB resident ({run['hwm']:.1f} MB peak), "
            f"{run['cpu'] * 1000:.1f} ms CPU per interval, {run['share'] * 100:.2f}% of a core"
        )
        lines.append(
            f"    resident: {run['anon']:.1f} MB anonymous, {run['file']:.1f} MB file-backed (code, shared); "
            f"PSS {run['pss']:.1f} MB, USS {run['uss']:.1f} MB; {run['threads']:.0f} threads; "
            f"floor (python + grpc + protobuf + sockfleet.v1): {run['floor']:.1f} MB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,10000,100000", help="comma-separated counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median is shown")
    parser.add_argument("--run-at", default="1000", help="counts at which `agent run` is measured too ('': none)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between the running agent's scans")
    parser.add_argument(
        "--run-intervals", type=int, default=3, help="intervals over which the running agent is measured"
    )
    parser.add_argument("--hold", nargs=2, metavar=("COUNT", "ADDRESS"), help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        hold(int(args.hold[0]), args.hold[1])
        return 0
    if args.warm:
        warm_scans(args.warm)
        return 0
    if args.ack:
        acking_collector()
        return 0
    raise_fd_limit()
    run_at = {int(n) for n in args.run_at.split(",") if n}
    for connections in (int(n) for n in args.connections.split(",")):
        run = (args.interval, args.run_intervals) if connections in run_at else None
        print(report(connections, bench(connections, args.repeat, run)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
