"""The middleware's verdict cache: a bounded LRU of VALID verdicts only.

Entries are keyed by a BLAKE2s of the key together with the client address and TLS flag the
verdict was given for (``_verifier.digest``), so an IP allowlist or a TLS requirement is never
answered from a verdict for another address. An entry lives at most ``ttl`` seconds and never
past the key's ``expires_at``. While the change stream is down (``live`` is false) new entries
get the short ``degraded_ttl`` and existing ones are cut to it, since changes may be missed
meanwhile.
A change arriving while a verification is in flight bumps ``generation``, so the answer that
was computed before the change is not cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from keyplane.sdk._protocol import CHANGE_FIELDS

Identity = Mapping[str, Any]


class VerdictCache:
    def __init__(self, size: int, ttl: float, degraded_ttl: float,
                 timer: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError("cache_size must be at least 1")
        if ttl < 0 or degraded_ttl < 0:
            raise ValueError("cache TTLs must not be negative")
        self.size = size
        self.ttl = ttl
        self.degraded_ttl = min(degraded_ttl, ttl)
        self.timer = timer
        self.generation = 0
        self.live = False
        # digest -> (deadline, identity, its key id), least recently used first; one object
        # for the cache's life (the verifier's hot path reads it directly, as ``get`` does)
        self.entries: OrderedDict[Hashable, tuple[float, Identity, str]] = OrderedDict()

    def get(self, digest: Hashable) -> Identity | None:
        item = self.entries.get(digest)
        if item is None:
            return None
        if item[0] <= self.timer():
            del self.entries[digest]
            return None
        self.entries.move_to_end(digest)
        return item[1]

    def put(self, digest: Hashable, identity: Identity, *, expires_in: float | None,
            generation: int) -> bool:
        """Cache a VALID verdict; ``False`` when it must not be (a change arrived meanwhile,
        or the key expires too soon to be worth it)."""
        if generation != self.generation:
            return False
        ttl = self.ttl if self.live else self.degraded_ttl
        if expires_in is not None:
            ttl = min(ttl, expires_in)
        if ttl <= 0:
            return False
        data = self.entries
        data[digest] = (self.timer() + ttl, identity, identity["key_id"])
        data.move_to_end(digest)
        while len(data) > self.size:
            data.popitem(last=False)
        return True

    def invalidate(self, kind: str, ref: str) -> int:
        """Drop what a change to ``kind``/``ref`` may affect; unknown kinds drop everything.
        An access token's ``key_id`` is its connection's id; an ``app`` change drops that app's
        tokens (and any token whose app Keyplane did not name)."""
        self.generation += 1
        field = CHANGE_FIELDS.get(kind)
        if field is None:
            dropped = len(self.entries)
            self.entries.clear()
            return dropped
        doomed = [d for d, (_, ident, _) in self.entries.items() if ident.get(field) == ref or (
            kind == "app" and ident.get("kind") == "access_token" and not ident.get("app_id"))]
        for d in doomed:
            del self.entries[d]
        return len(doomed)

    def set_live(self, live: bool) -> None:
        """The change stream came up (``True``) or went down (``False``)."""
        if live == self.live:
            return
        self.live = live
        if not live:
            self.generation += 1
            cutoff = self.timer() + self.degraded_ttl
            for digest, (deadline, ident, key_id) in list(self.entries.items()):
                if deadline > cutoff:
                    self.entries[digest] = (cutoff, ident, key_id)

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)
