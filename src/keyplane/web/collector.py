"""The Prometheus collector of one Keyplane process: its figures, read when Prometheus scrapes.

It reads the built container (``keyplane.bootstrap.Keyplane``), so it sits in the web adapter
beside ``GET /metrics``; the per-request counting it reports lives in ``keyplane.metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from keyplane.bootstrap import Keyplane
from keyplane.metrics import BUCKETS, LAG_BUCKETS, RequestMetrics


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

    def __init__(self, kp: Keyplane, requests: RequestMetrics) -> None:
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
                                value=verifier.cache.entries)

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
        for name in ("redis", "notify", "degraded", "polling"):
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


def registry_for(kp: Keyplane, requests: RequestMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeyplaneCollector(kp, requests))
    return registry
