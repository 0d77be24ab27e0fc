"""The collector's Prometheus metrics (served by ``--metrics-listen``, see ``sockfleet.monitoring``).

Each collector has a registry of its own, so that several in one process (tests, the demo) do not mix.
Names follow Prometheus's conventions: ``sockfleet_collector_*``, base units, ``_total`` for counters.
The hosts by status are read from the database when scraped, in the scraping thread, with the rule of
``sockfleet hosts`` (``queries.observed``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as Source
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from sockfleet.collector import queries

log = logging.getLogger("sockfleet.collector")

# Why a stream or a message was refused: a fixed set, so that a label never carries an agent's text.
REFUSALS = (
    "invalid",  # a malformed or invalid message or hello (INVALID_ARGUMENT)
    "unauthenticated",  # no agent token or client certificate, or an unknown or revoked token
    "permission_denied",  # a credential for another host, or a host name that is another host's
    "old_epoch",  # an epoch older than the host's history (another agent process reports for the host)
    "rate_limited",  # more repeated scans a second than --rate-limit
    "too_large",  # a snapshot whose parts add up to more than the collector takes
    "busy",  # too many streams waiting for their hello, or snapshots coming in parts
    "timeout",  # no hello, or the next part of a snapshot, in time
    "held",  # another collector is applying the host's stream (several collectors on one database)
    "taken",  # a newer stream of the host took it over, at this collector or another
)
# A RejectedMessage's gRPC status, as a refusal reason.
REFUSAL_BY_CODE = {
    "INVALID_ARGUMENT": "invalid",
    "PERMISSION_DENIED": "permission_denied",
    "FAILED_PRECONDITION": "old_epoch",
    "RESOURCE_EXHAUSTED": "too_large",
    "UNAUTHENTICATED": "unauthenticated",
    "UNAVAILABLE": "held",
    "ABORTED": "taken",
}
KINDS = ("snapshot", "delta", "heartbeat")
HOST_STATUSES = ("live", "stale", "unknown")
# Receipt to acknowledgement: a heartbeat on SQLite takes well under a millisecond, a huge snapshot minutes.
APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class CollectorMetrics:
    """Every metric of one collector, in its own ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents = Gauge(
            "sockfleet_collector_agents_connected", "Agent streams open now, past their hello.", registry=self.registry
        )
        self.applied = Counter(
            "sockfleet_collector_messages_applied",
            "Agent messages stored and acknowledged, by kind: snapshot, delta (sockets changed), "
            "heartbeat (a delta that changes no socket). Replays are not counted.",
            ["kind"],
            registry=self.registry,
        )
        self.refused = Counter(
            "sockfleet_collector_messages_refused",
            "Streams and messages refused, by reason: " + ", ".join(REFUSALS) + ".",
            ["reason"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "sockfleet_collector_apply_seconds",
            "Seconds from the receipt of an agent message to its acknowledgement (committed).",
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.database_errors = Counter(
            "sockfleet_collector_database_errors",
            "Database errors met while serving agents (unreachable database, failed statements).",
            registry=self.registry,
        )
        self.gaps = Counter(
            "sockfleet_collector_gaps_reported",
            "Gaps (scans an agent lost: spool full, restart, refused message) reported in the messages applied.",
            registry=self.registry,
        )
        self.group_size = Histogram(
            "sockfleet_collector_group_messages",
            "Deltas of different hosts applied in one transaction (group commit): one while the "
            "collector keeps up, more as the load grows.",
            buckets=GROUP_BUCKETS,
            registry=self.registry,
        )
        # Each label's child, made once: ``labels(...)`` looks it up under a lock, at every message otherwise.
        self.applied_by_kind = {kind: self.applied.labels(kind) for kind in KINDS}
        self.refused_by_reason = {reason: self.refused.labels(reason) for reason in REFUSALS}

    def refusal(self, reason: str) -> None:
        self.refused_by_reason.get(reason, self.refused_by_reason["invalid"]).inc()

    def watch_hosts(self, engine: Engine) -> None:
        """Report ``sockfleet_collector_hosts`` from ``engine`` at each scrape."""
        self.registry.register(HostStatuses(engine))


class HostStatuses(Source):
    """``sockfleet_collector_hosts{status}``, read when scraped: ``live`` and ``stale`` as ``sockfleet hosts``
    says them (a host is stale when its last scan is older than three of its intervals), ``unknown`` for
    hosts enrolled or greeted but never observed.  Nothing is reported while the database does not answer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]  # lets the registry check the name without a query

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.engine.connect() as conn:
                seen = queries.observed(conn, None)
        except DBAPIError as exc:
            log.debug("hosts by status not reported: the database does not answer (%s)", exc.__class__.__name__)
            return
        counts = {
            "live": len(seen.known),
            "stale": sum(1 for ref in seen.unknown if ref in seen.last),
            "unknown": sum(1 for ref in seen.unknown if ref not in seen.last),
        }
        family = self._family()
        for status in HOST_STATUSES:
            family.add_metric([status], counts[status])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "sockfleet_collector_hosts",
            "Hosts in the database by status: live (observed within three scan intervals), stale (observed "
            "before that), unknown (never observed); the rule of `sockfleet hosts`.",
            labels=["status"],
        )
