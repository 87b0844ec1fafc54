"""Rate limits, with the ``limits`` library.

* **Per-key limits** (``ratelimit: {limit, window_seconds}`` on a key): the *moving window*
  strategy, which is exact: no window of ``window_seconds`` ever admits more than ``limit``
  verifications (a sliding-window counter would only approximate it). The price is one stored
  timestamp per admitted request in the window, i.e. memory proportional to ``limit`` per
  active key (at most ``validate.MAX_RATE_LIMIT``: about 20 MB in Redis).
* **Counting failed attempts** (``AttemptCounts``, the ``core.attempts.AttemptCounter`` port):
  the counts behind the one failed-attempt policy, ``services/throttle.py``, which decides what
  is counted, per what key and up to which limit.

Counts live in Redis when ``KEYPLANE_REDIS_URL`` is set (one exact count shared by every worker)
and in process memory otherwise. Only a lost connection to Redis (refused, reset, timed out, or
a read-only replica) makes each worker fall back to its own memory counts (so N workers admit up
to N times a key's limit while it is down); that is logged at WARNING once when it happens and
once when Redis is back, shown by ``/readyz`` as ``"ratelimit": "memory"``, and Redis is tried
again after a second. Any other error from Redis (say, the limiter's script failing on one
count) is tied to that one count: it fails closed for that key or address alone, and everyone
else keeps the shared counts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from keyplane.core.attempts import CountFault, Limit
from keyplane.core.decisions import Code, Denied
from keyplane.core.policy import Snapshot
from keyplane.core.ports import QuotaStore

log = logging.getLogger("keyplane.ratelimit")

T = TypeVar("T")

RETRY_REDIS_SECONDS = 1.0


# what a lost connection looks like; any other Redis error is about the count being made
CONNECTION_LOST = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError)


class LimiterFault(Exception):
    """Redis answered, but refused this one count (e.g. its script failed on the key's data)."""


class LimitStore:
    """The limiter to use: the shared Redis one when it answers, this process's otherwise."""

    def __init__(self, redis_url: str | None, *, prefix: str, timeout: float = 0.5) -> None:
        self.memory: RateLimiter = MovingWindowRateLimiter(MemoryStorage())
        self.shared: RateLimiter | None = None
        self._pool: Any = None
        if redis_url:
            self._pool = redis.ConnectionPool.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            storage = RedisStorage(redis_url, connection_pool=self._pool,
                                   key_prefix=f"{prefix}:limits")
            self.shared = MovingWindowRateLimiter(storage)
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    @property
    def blocking(self) -> bool:
        """Calls may wait on the network (keep them off an event loop)."""
        return self.shared is not None

    @property
    def shared_up(self) -> bool:
        return self.shared is not None and not self._down

    @property
    def mode(self) -> str:
        """``"redis"`` (one count shared by every worker) or ``"memory"`` (each worker's own:
        no Redis configured, or its connection is lost), as last seen."""
        return "redis" if self.shared_up else "memory"

    def run(self, fn: Callable[[RateLimiter], T]) -> T:
        """``fn`` on the shared limiter, or on this process's when Redis cannot be reached.
        Raises ``LimiterFault`` when Redis answers with an error for this count."""
        shared = self.shared
        if shared is not None and time.monotonic() >= self._down_until:
            try:
                result = fn(shared)
            except CONNECTION_LOST as exc:
                self._lost(exc)
            except (redis.RedisError, StorageError) as exc:
                self._answered()
                raise LimiterFault(f"{type(exc).__name__}: {exc}") from exc
            else:
                self._answered()
                return result
        return fn(self.memory)

    def _lost(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_REDIS_SECONDS
            first = not self._down
            self._down = True
        if first:
            log.warning("Redis rate-limit storage is unreachable (%s); each worker counts on "
                        "its own until it is back", type(exc).__name__)

    def _answered(self) -> None:
        if self._down:
            with self._lock:
                back, self._down = self._down, False
            if back:
                log.warning("Redis rate-limit storage is back; counts are shared again")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()


RATE_LIMITED = Denied(Code.RATE_LIMITED, "the key's rate limit is exhausted")
QUOTA_EXHAUSTED = Denied(Code.RATE_LIMITED, "usage quota exhausted")
# fail closed: a count that cannot be made refuses that key (or address) alone
LIMIT_UNCHECKED = Denied(Code.RATE_LIMITED,
                         "the key's rate limit could not be checked; try again later")


class Faults:
    """Logs each limiter fault at ERROR, once a minute per key or address (a broken count
    repeats on every request)."""

    EVERY_SECONDS = 60.0
    MAX_TRACKED = 10_000

    def __init__(self) -> None:
        self._logged: dict[str, float] = {}

    def report(self, who: str, what: str, exc: LimiterFault) -> None:
        now = time.monotonic()
        last = self._logged.get(who)
        if last is not None and now - last < self.EVERY_SECONDS:
            return
        if len(self._logged) >= self.MAX_TRACKED:
            self._logged.clear()
        self._logged[who] = now
        log.error(what + " could not be counted in Redis (%s); refused", who, exc)


class KeyRateLimits:
    """The verifier's ``rate_check``: the key's rate limit, then its usage quota.

    Returns (denial or ``None``, the answer's ``ratelimit`` object ``{"limit", "remaining",
    "reset_at"}``), where ``reset_at`` is a Unix time in seconds: when the oldest request in
    the window leaves it and one more is admitted. A request refused by the rate limit does not
    use up quota."""

    def __init__(self, store: LimitStore, quotas: QuotaStore | None = None) -> None:
        self.rejections: dict[str, int] = {"rate_limit": 0, "quota": 0}  # /metrics
        self.store = store
        self.quotas = quotas
        self.faults = Faults()
        self._items: dict[tuple[int, int], RateLimitItem] = {}

    @property
    def blocking(self) -> bool:
        return self.store.blocking

    def _item(self, limit: int, window: int) -> RateLimitItem:
        item = self._items.get((limit, window))
        if item is None:
            item = RateLimitItemPerSecond(limit, window, namespace="key")
            self._items[(limit, window)] = item
        return item

    def __call__(self, snapshot: Snapshot) -> tuple[Denied | None, dict[str, int] | None]:
        info = None
        if snapshot.ratelimit is not None:
            limit, window = snapshot.ratelimit
            item = self._item(limit, window)
            ident = (snapshot.kind, snapshot.key_id)

            def check(limiter: RateLimiter) -> tuple[bool, Any]:
                allowed = limiter.hit(item, *ident)
                return allowed, limiter.get_window_stats(item, *ident)

            try:
                allowed, stats = self.store.run(check)
            except LimiterFault as exc:
                self.faults.report(snapshot.key_id, "the rate limit of key %s", exc)
                return LIMIT_UNCHECKED, {"limit": limit, "remaining": 0,
                                         "reset_at": math.ceil(time.time()) + 1}
            info = {"limit": limit, "remaining": max(0, int(stats.remaining)),
                    "reset_at": math.ceil(stats.reset_time)}
            if not allowed:
                self.rejections["rate_limit"] += 1
                return RATE_LIMITED, info
        if snapshot.meta.get("quota") and self.quotas is not None:
            admitted, _left = self.quotas.take(snapshot.key_id)
            if not admitted:
                self.rejections["quota"] += 1
                return QUOTA_EXHAUSTED, info
        return None, info


class AttemptCounts:
    """The failed-attempt policy's counter (``core.attempts.AttemptCounter``) on the same
    store as the key limits: moving windows, in Redis when it answers, in this process's memory
    while it does not. A count Redis refuses is logged (once a minute per ident) and raised as
    ``CountFault``."""

    def __init__(self, store: LimitStore) -> None:
        self.store = store
        self.faults = Faults()
        self._items: dict[Limit, RateLimitItem] = {}

    def _item(self, limit: Limit) -> RateLimitItem:
        item = self._items.get(limit)
        if item is None:
            item = RateLimitItemPerSecond(limit.amount, limit.seconds,
                                          namespace=limit.namespace)
            self._items[limit] = item
        return item

    def _run(self, limit: Limit, ident: tuple[str, ...], fn: Callable[[RateLimiter], T]) -> T:
        try:
            return self.store.run(fn)
        except LimiterFault as exc:
            self.faults.report("/".join(ident), f"the attempts ({limit.namespace}) of %s", exc)
            raise CountFault(str(exc)) from exc

    def hit(self, limit: Limit, *ident: str) -> int | None:
        item = self._item(limit)

        def count(limiter: RateLimiter) -> int | None:
            if limiter.hit(item, *ident):
                return None
            return _wait(limiter.get_window_stats(item, *ident).reset_time)

        return self._run(limit, ident, count)

    def peek(self, limit: Limit, *ident: str) -> int | None:
        item = self._item(limit)

        def test(limiter: RateLimiter) -> int | None:
            if limiter.test(item, *ident):
                return None
            return _wait(limiter.get_window_stats(item, *ident).reset_time)

        return self._run(limit, ident, test)

    def clear(self, limit: Limit, *ident: str) -> None:
        item = self._item(limit)
        self._run(limit, ident, lambda limiter: limiter.clear(item, *ident))


def _wait(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))


def parse_limit(text: str, namespace: str = "attempt") -> Limit:
    """A limit written in the ``limits`` syntax (``"5/15 minutes"``, ``"30 per hour"``)."""
    item = parse(text)
    return Limit(item.amount, item.get_expiry(), namespace)
