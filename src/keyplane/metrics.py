"""Prometheus metrics (``GET /metrics``), every name prefixed ``keyplane_``.

The request path only bumps plain integers in dicts: the counting runs on the worker's event
loop (one thread), so no lock is needed and no label is formatted per request. The
``prometheus_client`` families are built from these numbers when Prometheus scrapes, in
:class:`KeyplaneCollector`; gauges that need the database (the webhook backlog) are read then.
Counters bumped from worker threads (cache misses, rate-limit and throttle refusals) may, very
rarely, lose an increment to a thread switch; they never over-count.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

# request duration buckets, in seconds: a cached verification takes well under a millisecond
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"  # a path no route serves: never the path itself (unbounded labels)

class RequestMetrics:
    """Per-process request figures, filled on the event loop."""

    def __init__(self) -> None:
        self.verifications: dict[str, int] = {}  # POST /v1/verify answers by code
        # (method, route template) -> [count per bucket..., count above the last, sum]
        self.latency: dict[tuple[str, str], list[float]] = {}

    def verified(self, code: str) -> None:
        counts = self.verifications
        counts[code] = counts.get(code, 0) + 1

    def row(self, method: str, route: str) -> list[float]:
        """The counts of one route, made on its first request: a hot route keeps a reference
        and bumps it with :func:`observe` (no tuple, no lookup per request)."""
        key = (method, route)
        found = self.latency.get(key)
        if found is None:
            found = self.latency[key] = [0] * (len(BUCKETS) + 1) + [0.0]
        return found

    def observe(self, method: str, route: str, seconds: float) -> None:
        observe(self.row(method, route), seconds)


def observe(row: list[float], seconds: float) -> None:
    row[bisect_left(BUCKETS, seconds)] += 1
    row[-1] += seconds

# invalidation lag buckets, in seconds: Redis delivers in milliseconds, the log poller within
# its period (0.5 s alone, 5 s as Redis's safety net)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0)


class InvalidationLag:
    """How long changes took from commit (their time in the change log or on the Redis
    message) to being applied to this worker's caches, by the way they arrived: ``redis``
    (pub/sub) or ``log`` (the change-log poller, which reads every change, this worker's own
    too: its figures are the bound that holds without Redis). Filled from the propagation
    threads, hence the lock (a few changes per second, never the request path)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, via: str, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # clocks of two hosts may disagree a little
        with self._lock:
            row = self.rows.get(via)
            if row is None:
                row = self.rows[via] = [0] * (len(LAG_BUCKETS) + 1) + [0.0]
            row[bisect_left(LAG_BUCKETS, seconds)] += 1
            row[-1] += seconds


def _histogram(family: HistogramMetricFamily, labels: list[str], bounds: tuple[float, ...],
               row: list[float]) -> None:
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, hits in zip((*bounds, float("inf")), row[:-1], strict=True):
        running += hits
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    family.add_metric(labels, buckets, row[-1])


class KeyplaneCollector(Collector):
    """Reads the figures of one Keyplane process when Prometheus scrapes."""

    def __init__(self, kp: Any, requests: RequestMetrics) -> None:
        self.kp = kp
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        yield from self._database()  # first: the webhook backlog's read may end an outage
        yield from self._requests()
        yield from self._cache()
        yield from self._limits()
        yield from self._webhooks()
        yield from self._propagation()

    def _requests(self) -> Iterator[Metric]:
        verified = CounterMetricFamily(
            "keyplane_verifications", "POST /v1/verify answers, by code", labels=["code"])
        for code, n in sorted(self.requests.verifications.items()):
            verified.add_metric([code], n)
        yield verified
        latency = HistogramMetricFamily(
            "keyplane_http_request_duration_seconds",
            "Time from the first byte read to the last byte sent, by route template",
            labels=["method", "route"])
        for (method, route), row in sorted(self.requests.latency.items()):
            _histogram(latency, [method, route], BUCKETS, row)
        yield latency

    def _cache(self) -> Iterator[Metric]:
        verifier = self.kp.verifier
        hits, misses = verifier.cache_hits, verifier.cache_misses
        yield CounterMetricFamily("keyplane_verify_cache_hits",
                                  "Credential checks answered from this worker's cache",
                                  value=hits)
        yield CounterMetricFamily("keyplane_verify_cache_misses",
                                  "Credential checks that read the database", value=misses)
        yield GaugeMetricFamily("keyplane_verify_cache_hit_ratio",
                                "Hits / (hits + misses) since this worker started",
                                value=hits / (hits + misses) if hits + misses else 0.0)
        yield GaugeMetricFamily("keyplane_verify_cache_entries",
                                "Credentials this worker's cache holds",
                                value=len(verifier.cache.hits))

    def _limits(self) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "keyplane_ratelimit_rejections",
            "Requests of keys refused by their rate limit or usage quota", labels=["reason"])
        checker = self.kp.verifier.rate_check
        for reason, n in sorted(getattr(checker, "rejections", {}).items()):
            rejected.add_metric([reason], n)
        yield rejected
        throttle = self.kp.throttle
        throttled = CounterMetricFamily(
            "keyplane_failed_credentials_throttled",
            "Failed credentials over the per-address limit (each answered 429)",
            labels=["scope"])
        for scope, n in sorted(throttle.throttled.items()):
            throttled.add_metric([scope], n)
        yield throttled
        yield GaugeMetricFamily("keyplane_failed_credentials_blocked_addresses",
                                "Addresses this worker currently refuses for failed credentials",
                                value=len(throttle.blocked_now()))

    def _webhooks(self) -> Iterator[Metric]:
        try:
            pending, oldest = self.kp.webhooks.backlog()
        except Exception:  # the database is away: say so rather than fail the scrape
            yield GaugeMetricFamily("keyplane_webhook_backlog_up",
                                    "Whether the webhook backlog could be read", value=0)
            return
        yield GaugeMetricFamily("keyplane_webhook_backlog_up",
                                "Whether the webhook backlog could be read", value=1)
        yield GaugeMetricFamily("keyplane_webhook_backlog",
                                "Webhook deliveries waiting to be sent (all workers)",
                                value=pending)
        yield GaugeMetricFamily("keyplane_webhook_oldest_pending_age_seconds",
                                "Age of the oldest waiting delivery (0: none waits)",
                                value=oldest)

    def _propagation(self) -> Iterator[Metric]:
        lag = HistogramMetricFamily(
            "keyplane_invalidation_lag_seconds",
            "From a change's commit to its invalidation applied in this worker, by the way it "
            "arrived (redis: pub/sub; log: the change-log poller)", labels=["via"])
        recorded = self.kp.invalidation_lag
        with recorded._lock:
            rows = {via: list(row) for via, row in recorded.rows.items()}
        for via, row in sorted(rows.items()):
            _histogram(lag, [via], LAG_BUCKETS, row)
        yield lag
        yield GaugeMetricFamily("keyplane_change_stream_subscribers",
                                "Open GET /v1/changes event streams on this worker",
                                value=self.kp.feed.subscribers)
        propagation = self.kp.propagation
        mode = GaugeMetricFamily("keyplane_invalidation_mode",
                                 "How this worker hears of changes (1: the current way)",
                                 labels=["mode"])
        for name in ("redis", "degraded", "polling"):
            mode.add_metric([name], 1 if propagation.mode == name else 0)
        yield mode

    def _database(self) -> Iterator[Metric]:
        pool = self.kp.engine.pool
        size = getattr(pool, "size", None)
        checked_out = getattr(pool, "checkedout", None)
        if callable(size) and callable(checked_out):  # a QueuePool (PostgreSQL)
            yield GaugeMetricFamily("keyplane_db_pool_size",
                                    "Connections the pool keeps (beyond them: overflow)",
                                    value=size())
            yield GaugeMetricFamily("keyplane_db_pool_checked_out",
                                    "Connections in use right now", value=checked_out())
            overflow = getattr(pool, "overflow", None)
            if callable(overflow):
                yield GaugeMetricFamily("keyplane_db_pool_overflow",
                                        "Connections opened beyond the pool size (negative: "
                                        "pool slots not yet opened)", value=overflow())
        health = self.kp.ctx.health
        if health is None:
            return
        yield GaugeMetricFamily("keyplane_db_up",
                                "Whether the database answered the last round trip",
                                value=0 if health.down else 1)
        yield GaugeMetricFamily("keyplane_db_down_seconds",
                                "How long the current database outage has lasted (0: none)",
                                value=health.seconds_down())
        yield CounterMetricFamily("keyplane_db_outages",
                                  "Database outages this worker has seen since it started",
                                  value=health.outages)


def registry_for(kp: Any, requests: RequestMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeyplaneCollector(kp, requests))
    return registry
