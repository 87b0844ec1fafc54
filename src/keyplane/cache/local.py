"""A bounded in-process LRU cache of verification snapshots, keyed by a hash of the secret.

Entries expire at their own deadline (never after the key's expiry). Invalidation drops entries
by key, owner or tenant, and bumps a generation counter so that a database read that started
before an invalidation cannot put a stale snapshot back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from keyplane.core.policy import Snapshot
from keyplane.core.ports import MISSING, Memo

T = TypeVar("T")
CacheKey = Hashable  # the verifier uses a SHA-256 of the credential


class LRU(Generic[T]):
    """A bounded LRU map with per-entry deadlines.

    ``tags`` (optional) names what each value belongs to, e.g. ``("key", key_id)``: an index
    from tag to entries makes :meth:`drop_tag` cost the number of matching entries, not the size
    of the cache (a bulk revocation of many keys must not scan 100,000 entries per key). A tag
    with one entry maps to that entry's key itself, a set only once several share it (most keys
    have one cached secret: a set each would double the memory per cached key).
    """

    def __init__(self, size: int,
                 tags: Callable[[T], Iterable[tuple[str, str]]] | None = None) -> None:
        self.size = size
        self._data: OrderedDict[CacheKey, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()
        self._tags = tags
        self._index: dict[tuple[str, str], CacheKey | set[CacheKey]] = {}

    @property
    def table(self) -> Mapping[CacheKey, tuple[float, T]]:
        """The entries, ``key -> (deadline, value)``, read-only: for a hot path that cannot
        afford :meth:`get`'s call (the caller checks the deadline; recency is not updated)."""
        return self._data

    def get(self, key: CacheKey, now: float) -> T | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= now:
            with self._lock:
                self._pop(key)
            return None
        try:  # not contextlib.suppress: this is the hot path, and that builds an object
            self._data.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile
            return item[1]
        return item[1]

    def deadline(self, key: CacheKey) -> float | None:
        """When ``key``'s entry expires (``timer()`` units), or None if there is none."""
        item = self._data.get(key)
        return None if item is None else item[0]

    def put(self, key: CacheKey, value: T, deadline: float) -> None:
        with self._lock:
            self._pop(key)
            self._data[key] = (deadline, value)
            if self._tags is not None:
                index = self._index
                for tag in self._tags(value):
                    present = index.get(tag)
                    if present is None:
                        index[tag] = key
                    elif isinstance(present, set):
                        present.add(key)
                    elif present != key:
                        index[tag] = {present, key}
            while len(self._data) > self.size:
                self._pop(next(iter(self._data)))

    def _pop(self, key: CacheKey) -> None:
        """Remove ``key`` and its index entries; the caller holds the lock."""
        item = self._data.pop(key, None)
        if item is None or self._tags is None:
            return
        index = self._index
        for tag in self._tags(item[1]):
            present = index.get(tag)
            if isinstance(present, set):
                present.discard(key)
                if len(present) == 1:
                    index[tag] = next(iter(present))
                elif not present:
                    del index[tag]
            elif present == key:
                del index[tag]

    def _tagged(self, tag: tuple[str, str]) -> list[CacheKey]:
        present = self._index.get(tag)
        if present is None:
            return []
        return list(present) if isinstance(present, set) else [present]

    def drop_tag(self, tag: tuple[str, str]) -> int:
        with self._lock:
            doomed = self._tagged(tag)
            for key in doomed:
                self._pop(key)
        return len(doomed)

    def drop_where(self, predicate: Callable[[T], bool]) -> int:
        with self._lock:
            doomed = [k for k, (_, v) in self._data.items() if predicate(v)]
            for k in doomed:
                self._pop(k)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._index.clear()

    def __len__(self) -> int:
        return len(self._data)


def snapshot_tags(s: Snapshot) -> Iterator[tuple[str, str]]:
    """What a cached verification depends on: a change to any of these drops it."""
    yield ("key", s.key_id)
    if s.owner_id is not None:
        yield ("principal", s.owner_id)
    if s.tenant_id is not None:
        yield ("tenant", s.tenant_id)
    grant, app = s.meta.get("grant_id"), s.meta.get("app_id")
    if isinstance(grant, str):  # OAuth access tokens (meta set by their loader)
        yield ("connection", grant)
    if isinstance(app, str):
        yield ("app", app)


class VerificationCache:
    """Snapshots by credential hash (``hits``), unknown credentials (``misses``), and answers
    computed from hits, remembered for exact repeats of a question: ``verdicts`` (the
    verifier's, by key, required scopes, address and TLS) and ``answers`` (the encoded reply to
    one exact ``POST /v1/verify`` request). Every invalidation drops every remembered answer:
    one may depend on several snapshots, and rebuilding one costs microseconds."""

    def __init__(self, size: int, ttl: float, negative_size: int = 10_000,
                 negative_ttl: float = 5.0, timer: Callable[[], float] = time.monotonic,
                 answer_size: int = 10_000) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.timer = timer
        self.hits: LRU[Snapshot] = LRU(size, tags=snapshot_tags)
        self.misses: LRU[type[MISSING]] = LRU(negative_size)
        self.verdicts: LRU[Any] = LRU(answer_size)
        self.answers: LRU[Any] = LRU(answer_size)
        self.generation = 0
        # the generation check and the put are one step, so an invalidation (from another
        # thread: Redis, the change poller) cannot slip between them and leave a stale entry
        self._generation_lock = threading.Lock()

    @property
    def entries(self) -> int:
        return len(self.hits)

    def get(self, digest: CacheKey) -> Snapshot | type[MISSING] | None:
        now = self.timer()
        found = self.hits.get(digest, now)
        if found is not None:
            return found
        return self.misses.get(digest, now)

    def put(self, digest: CacheKey, snapshot: Snapshot, generation: int,
            seconds_left: float | None) -> None:
        ttl = self.ttl if seconds_left is None else min(self.ttl, seconds_left)
        with self._generation_lock:
            if generation != self.generation:
                return  # something changed while we read: do not cache what may be stale
            if ttl > 0:
                self.hits.put(digest, snapshot, self.timer() + ttl)

    def put_missing(self, digest: CacheKey, generation: int) -> None:
        with self._generation_lock:
            if generation == self.generation:
                self.misses.put(digest, MISSING, self.timer() + self.negative_ttl)

    def seconds_left(self, digest: CacheKey) -> float | None:
        """How long the snapshot cached for ``digest`` may still be used (None: none is)."""
        deadline = self.hits.deadline(digest)
        return None if deadline is None else deadline - self.timer()

    def remembered(self, store: Memo[T], question: CacheKey) -> T | None:
        """The answer ``store`` (``verdicts`` or ``answers``) remembers for ``question``."""
        return store.get(question, self.timer()) if store.size else None

    def remember(self, store: Memo[T], question: CacheKey, answer: T, generation: int,
                 depends_on: Iterable[CacheKey]) -> bool:
        """Remembers ``answer`` until the first of the ``depends_on`` hits expires (so it never
        outlives what it was computed from) or the next invalidation. Nothing is remembered if
        anything changed since ``generation`` was read, or a dependency is no longer cached."""
        if not store.size:
            return False
        with self._generation_lock:
            if generation != self.generation:
                return False
            deadline = float("inf")
            for key in depends_on:
                found = self.hits.deadline(key)
                if found is None:
                    return False
                deadline = min(deadline, found)
            if deadline <= self.timer():
                return False
            store.put(question, answer, deadline)
        return True

    def invalidate(self, kind: str, ref: str) -> None:
        with self._generation_lock:
            self.generation += 1
            self.verdicts.clear()  # under the lock: remember() cannot slip in between
            self.answers.clear()
        if kind in ("key", "principal", "tenant", "connection", "app"):
            self.hits.drop_tag((kind, ref))
        else:
            self.hits.clear()
        self.misses.clear()
