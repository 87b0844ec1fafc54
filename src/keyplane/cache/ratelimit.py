"""Rate limits, with the ``limits`` library.

* **Per-key limits** (``ratelimit: {limit, window_seconds}`` on a key): the *moving window*
  strategy, which is exact: no window of ``window_seconds`` ever admits more than ``limit``
  verifications (a sliding-window counter would only approximate it). The price is one stored
  timestamp per admitted request in the window, i.e. memory proportional to ``limit`` per
  active key.
* **Slowing repeated failures** per client address: after ``KEYPLANE_FAILURE_LIMIT`` malformed
  or unknown credentials within ``KEYPLANE_FAILURE_WINDOW_SECONDS`` from one address (IPv6: one
  /64), that address gets 429 with ``Retry-After`` until the window frees up; other addresses
  are untouched. The first refusal in each window is audited as ``excess_rate_limit_exceeded``.

Counts live in Redis when ``KEYPLANE_REDIS_URL`` is set (one exact count shared by every worker)
and in process memory otherwise. If Redis fails, each worker falls back to its own memory
counts (so N workers admit up to N times a key's limit while it is down), logs it, and tries
Redis again after a second.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from keyplane.core.decisions import Code, Denied
from keyplane.core.policy import Address, Snapshot
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services.context import Context

log = logging.getLogger("keyplane.ratelimit")

T = TypeVar("T")

RETRY_REDIS_SECONDS = 1.0


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

    def run(self, fn: Callable[[RateLimiter], T]) -> T:
        shared = self.shared
        if shared is not None and time.monotonic() >= self._down_until:
            try:
                result = fn(shared)
            except (redis.RedisError, StorageError, OSError) as exc:
                with self._lock:
                    self._down_until = time.monotonic() + RETRY_REDIS_SECONDS
                    first = not self._down
                    self._down = True
                if first:
                    log.warning("Redis rate-limit storage failed (%s); each worker counts on "
                                "its own until it is back", type(exc).__name__)
            else:
                if self._down:
                    self._down = False
                    log.info("Redis rate-limit storage is back")
                return result
        return fn(self.memory)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()


class QuotaStore(Protocol):
    def take(self, key_id: str) -> tuple[bool, int | None]: ...


RATE_LIMITED = Denied(Code.RATE_LIMITED, "the key's rate limit is exhausted")
QUOTA_EXHAUSTED = Denied(Code.RATE_LIMITED, "usage quota exhausted")


class KeyRateLimits:
    """The verifier's ``rate_check``: the key's rate limit, then its usage quota.

    Returns (denial or ``None``, the answer's ``ratelimit`` object ``{"limit", "remaining",
    "reset_at"}``), where ``reset_at`` is a Unix time in seconds: when the oldest request in
    the window leaves it and one more is admitted. A request refused by the rate limit does not
    use up quota."""

    def __init__(self, store: LimitStore, quotas: QuotaStore | None = None) -> None:
        self.store = store
        self.quotas = quotas
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

            allowed, stats = self.store.run(check)
            info = {"limit": limit, "remaining": max(0, int(stats.remaining)),
                    "reset_at": math.ceil(stats.reset_time)}
            if not allowed:
                return RATE_LIMITED, info
        if snapshot.meta.get("quota") and self.quotas is not None:
            admitted, _left = self.quotas.take(snapshot.key_id)
            if not admitted:
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

        allowed, reset, first = self.store.run(count)
        if allowed:
            return None
        retry = max(1, math.ceil(reset - time.time()))
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
