"""Prometheus metrics (``GET /metrics``), every name prefixed ``keyplane_``.

The request path only bumps plain integers in dicts: the counting runs on the worker's event
loop (one thread), so no lock is needed and no label is formatted per request. The
``prometheus_client`` families are built from these numbers when Prometheus scrapes, in
:class:`keyplane.web.collector.KeyplaneCollector`; gauges that need the database (the
webhook backlog) are read then.
Counters bumped from worker threads (cache misses, rate-limit and throttle refusals) may, very
rarely, lose an increment to a thread switch; they never over-count.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

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
