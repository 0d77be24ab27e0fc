"""The agent's Prometheus metrics and health, for ``agent run --metrics-listen`` (see ``sockfleet.monitoring``).

Loaded only with that option: the agent stays light otherwise, and ``agent snapshot`` never loads it.
Names follow Prometheus's conventions: ``sockfleet_agent_*``, base units, ``_total`` for counters.
"""

from __future__ import annotations

import time
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sockfleet.agent.events import Closings
from sockfleet.agent.records import Proto, Snapshot
from sockfleet.agent.spool import Spool
from sockfleet.agent.stream import Observer

# A scan of a quiet host takes milliseconds; one of 500,000 sockets, seconds.
SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SLACK = 10.0  # seconds a scan or an acknowledgement may be late beyond three intervals before /healthz says so


class AgentMetrics(Observer):
    """Every metric of one agent, in its own ``registry``; ``problem`` is what ``/healthz`` answers."""

    def __init__(self, spool: Spool, interval: float) -> None:
        self.registry = registry = CollectorRegistry()
        self.interval = interval
        self.started = time.monotonic()
        self.last_scan: float | None = None  # monotonic
        self.last_ack: float | None = None
        self.attempts = 0  # connections begun
        self.spool = spool
        self.scan_seconds = Histogram(
            "sockfleet_agent_scan_seconds",
            "Seconds one scan of the host's sockets takes: every namespace, owners included.",
            buckets=SCAN_BUCKETS,
            registry=registry,
        )
        self.scans_failed = Counter("sockfleet_agent_scans_failed", "Scans that failed (logged).", registry=registry)
        self.sockets = Gauge(
            "sockfleet_agent_sockets", "Sockets the last scan found, by protocol.", ["proto"], registry=registry
        )
        self.unreadable = Gauge(
            "sockfleet_agent_processes_unreadable",
            "Processes the last scan could not read (their sockets show no owner; run as root to see them).",
            registry=registry,
        )
        self.events_lost = Counter(
            "sockfleet_agent_events_lost",
            "Times the kernel dropped socket-destroy events (each is at least one closed connection not counted).",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "sockfleet_agent_spool_bytes",
            "Bytes of the scans waiting for the collector's acknowledgement.",
            registry=registry,
        )
        self.spool_records = Gauge(
            "sockfleet_agent_spool_records", "Scans waiting for the collector's acknowledgement.", registry=registry
        )
        self.connects = Counter(
            "sockfleet_agent_connects",
            "Connections to the collector begun (the first one included).",
            registry=registry,
        )
        self.reconnects = Counter(
            "sockfleet_agent_reconnects",
            "Connections to the collector begun after the first: after a stream ended or a connection failed.",
            registry=registry,
        )
        self.connected = Gauge(
            "sockfleet_agent_connected",
            "1 while a stream to the collector is open and acknowledging, else 0.",
            registry=registry,
        )
        self.sent_messages = Counter(
            "sockfleet_agent_messages_sent",
            "Messages sent to the collector, by kind: snapshot, delta (heartbeats included).",
            ["kind"],
            registry=registry,
        )
        self.acked_messages = Counter(
            "sockfleet_agent_messages_acknowledged", "Messages the collector acknowledged.", registry=registry
        )
        self.dropped_messages = Counter(
            "sockfleet_agent_messages_dropped",
            "Scans the collector refused as invalid: dropped, and the gap recorded.",
            registry=registry,
        )
        self.last_scan_time = Gauge(
            "sockfleet_agent_last_scan_timestamp_seconds", "Unix time of the last successful scan.", registry=registry
        )
        self.last_ack_time = Gauge(
            "sockfleet_agent_last_acknowledged_timestamp_seconds",
            "Unix time the collector last acknowledged a message.",
            registry=registry,
        )
        self.spool_bytes.set_function(lambda: spool.size)
        self.spool_records.set_function(lambda: len(spool))
        for proto in Proto:
            self.sockets.labels(proto.value)
        for kind in ("snapshot", "delta"):
            self.sent_messages.labels(kind)

    def scanned(self, snap: Snapshot, closed: Closings | None, seconds: float) -> None:
        self.last_scan = time.monotonic()
        self.last_scan_time.set_to_current_time()
        self.scan_seconds.observe(seconds)
        counts = Tally(sock.proto for sock in snap.sockets)
        for proto in Proto:
            self.sockets.labels(proto.value).set(counts.get(proto, 0))
        self.unreadable.set(len(snap.coverage.processes_unreadable))
        if closed is not None:
            self.events_lost.inc(closed.lost)

    def scan_failed(self) -> None:
        self.scans_failed.inc()

    def connecting(self) -> None:
        if self.attempts:
            self.reconnects.inc()
        self.attempts += 1
        self.connects.inc()

    def disconnected(self) -> None:
        self.connected.set(0)

    def sent(self, kind: str) -> None:
        self.sent_messages.labels(kind).inc()

    def acked(self) -> None:
        self.last_ack = time.monotonic()
        self.last_ack_time.set_to_current_time()
        self.acked_messages.inc()
        self.connected.set(1)

    def dropped(self) -> None:
        self.dropped_messages.inc()

    def problem(self) -> str | None:
        """None while the agent scans and the collector acknowledges on time (three intervals, and some
        slack); else what is late."""
        limit = 3 * self.interval + SLACK
        now = time.monotonic()
        scanned = now - (self.last_scan or self.started)
        if scanned > limit:
            return f"no scan for {scanned:.0f} s (one every {self.interval:g} s)"
        acked = now - (self.last_ack or self.started)
        if acked > limit:
            return f"the collector acknowledged nothing for {acked:.0f} s; {len(self.spool)} scans waiting"
        return None
