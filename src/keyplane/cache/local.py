"""A bounded in-process LRU cache of verification snapshots, keyed by secret digest.

Entries expire at their own deadline (never after the key's expiry). Invalidation drops entries
by key, owner or tenant, and bumps a generation counter so that a database read that started
before an invalidation cannot put a stale snapshot back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from keyplane.core.policy import Snapshot

T = TypeVar("T")


class LRU(Generic[T]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> T | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= now:
            with self._lock:
                self._data.pop(key, None)
            return None
        with contextlib.suppress(KeyError):
            self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, value: T, deadline: float) -> None:
        with self._lock:
            self._data[key] = (deadline, value)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop_where(self, predicate: Callable[[T], bool]) -> int:
        with self._lock:
            doomed = [k for k, (_, v) in self._data.items() if predicate(v)]
            for k in doomed:
                del self._data[k]
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class MISSING:
    """A cached 'no such key' (digest unknown)."""


class VerificationCache:
    def __init__(self, size: int, ttl: float, negative_size: int = 10_000,
                 negative_ttl: float = 5.0, timer: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.timer = timer
        self.hits: LRU[Snapshot] = LRU(size)
        self.misses: LRU[type[MISSING]] = LRU(negative_size)
        self.generation = 0
        # the generation check and the put are one step, so an invalidation (from another
        # thread: Redis, the change poller) cannot slip between them and leave a stale entry
        self._generation_lock = threading.Lock()

    def get(self, digest: str) -> Snapshot | type[MISSING] | None:
        now = self.timer()
        found = self.hits.get(digest, now)
        if found is not None:
            return found
        return self.misses.get(digest, now)

    def put(self, digest: str, snapshot: Snapshot, generation: int,
            seconds_left: float | None) -> None:
        ttl = self.ttl if seconds_left is None else min(self.ttl, seconds_left)
        with self._generation_lock:
            if generation != self.generation:
                return  # something changed while we read: do not cache what may be stale
            if ttl > 0:
                self.hits.put(digest, snapshot, self.timer() + ttl)

    def put_missing(self, digest: str, generation: int) -> None:
        with self._generation_lock:
            if generation == self.generation:
                self.misses.put(digest, MISSING, self.timer() + self.negative_ttl)

    def invalidate(self, kind: str, ref: str) -> None:
        with self._generation_lock:
            self.generation += 1
        if kind == "key":
            self.hits.drop_where(lambda s: s.key_id == ref)
        elif kind == "principal":
            self.hits.drop_where(lambda s: s.owner_id == ref)
        elif kind == "tenant":
            self.hits.drop_where(lambda s: s.tenant_id == ref)
        elif kind in ("connection", "app"):  # OAuth access tokens (meta set by their loader)
            field = "grant_id" if kind == "connection" else "app_id"
            self.hits.drop_where(lambda s: s.meta.get(field) == ref)
        else:
            self.hits.clear()
        self.misses.clear()
