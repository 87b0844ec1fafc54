"""Rate limits, with the ``limits`` library.

* **Per-key limits** (``ratelimit: {limit, window_seconds}`` on a key): the *moving window*
  strategy, which is exact: no window of ``window_seconds`` ever admits more than ``limit``
  verifications (a sliding-window counter would only approximate it). The price is one stored
  timestamp per admitted request in the window, i.e. memory proportional to ``limit`` per
  active key (at most ``validate.MAX_RATE_LIMIT``: about 20 MB in Redis).
* **Slowing repeated failures** per client address: after ``KEYPLANE_FAILURE_LIMIT`` malformed
  or unknown credentials within ``KEYPLANE_FAILURE_WINDOW_SECONDS`` from one address (IPv6: one
  /64), that address gets 429 with ``Retry-After`` until the window frees up; other addresses
  are untouched. The first refusal in each window is audited as ``excess_rate_limit_exceeded``.
  Guesses at ``/v1/verify`` count against the end user's address (the body's ``ip``), or
  against the verifier's own address when the body names none.

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

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from keyplane.core.decisions import Code, Denied
from keyplane.core.policy import Address, Snapshot
from keyplane.core.ports import QuotaStore
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services.context import Context

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


def client_key(ip: Address) -> str:
    """What failures are counted against: the address, or its /64 for IPv6 (one subscriber
    usually holds a whole /64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class FailureThrottle:
    MAX_TRACKED = 100_000

    def __init__(self, store: LimitStore, ctx: Context, *, limit: int, window: int) -> None:
        self.store = store
        self.ctx = ctx
        self.limit = limit
        self.window = window
        self._item = RateLimitItemPerSecond(limit, window, namespace="fail")
        self._audit_item = RateLimitItemPerSecond(1, window, namespace="fail-audit")
        self._blocked: dict[tuple[str, str], float] = {}
        self.faults = Faults()
        self.throttled: dict[str, int] = {}  # /metrics: failures over the limit, by scope

    def blocked_now(self) -> list[tuple[str, str]]:
        """The (scope, address) pairs this process refuses now."""
        now = time.monotonic()
        return [k for k, until in list(self._blocked.items()) if until > now]

    @property
    def blocking(self) -> bool:
        """Whether this process knows of any blocked address at all (the hot path's check)."""
        return bool(self._blocked)

    def retry_after(self, scope: str, ip: Address | None) -> int | None:
        """Seconds this address must wait, if this process knows it is blocked (no I/O)."""
        if not self._blocked or ip is None:
            return None
        key = (scope, client_key(ip))
        until = self._blocked.get(key)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            self._blocked.pop(key, None)
            return None
        return max(1, math.ceil(left))

    def failed(self, scope: str, ip: Address | None, *,
               request_id: str | None = None) -> int | None:
        """Counts one failure (may wait on Redis: call it from a thread). Returns the seconds
        to wait when this address is now over the limit, else ``None``."""
        if ip is None:
            return None
        who = client_key(ip)

        def count(limiter: RateLimiter) -> tuple[bool, float, bool]:
            if limiter.hit(self._item, scope, who):
                return True, 0.0, False
            reset = limiter.get_window_stats(self._item, scope, who).reset_time
            return False, reset, limiter.hit(self._audit_item, scope, who)

        try:
            allowed, reset, first = self.store.run(count)
        except LimiterFault as exc:  # fail closed for this address alone
            self.faults.report(who, f"the failures ({scope}) of %s", exc)
            allowed, reset, first = False, time.time() + self.window, False
        if allowed:
            return None
        retry = max(1, math.ceil(reset - time.time()))
        self.throttled[scope] = self.throttled.get(scope, 0) + 1
        if len(self._blocked) >= self.MAX_TRACKED:
            now = time.monotonic()
            self._blocked = {k: u for k, u in self._blocked.items() if u > now}
            if len(self._blocked) >= self.MAX_TRACKED:
                self._blocked = {}  # the shared counts still refuse them on their next failure
        self._blocked[(scope, who)] = time.monotonic() + retry
        if first:
            self._audit(scope, who, str(ip), request_id)
        return retry

    def _audit(self, scope: str, who: str, ip: str, request_id: str | None) -> None:
        log.warning("too many failed credentials from %s (%s); refusing it for now", who, scope)
        caller = Caller(kind=CredentialKind.OPERATOR_KEY, scopes=frozenset(), ip=ip,
                        request_id=request_id)
        try:
            with self.ctx.uow() as uow:
                self.ctx.audit(uow, caller, "excess_rate_limit_exceeded", who, tenant_id=None,
                               outcome="denied", scope=scope, limit=self.limit,
                               window_seconds=self.window)
                uow.commit()
        except Exception:
            log.exception("could not audit excess_rate_limit_exceeded")
