"""Whether the database answers, and for how long cached verifications may stand in for it.

Storage reports every round trip's outcome (a connection checked out, a connection lost);
the verifier asks :meth:`DatabaseHealth.cache_trusted` before answering from its cache. While
the database is unreachable, cached answers are served for ``grace_seconds``
(``KEYPLANE_DB_OUTAGE_GRACE_SECONDS``) from the moment the loss was first seen; after that
nothing cached is trusted and every verification asks the database, which fails closed (503)
until it answers again. The first successful round trip ends the outage, and the
``on_recovered`` callbacks drop what the caches held (a change may have been committed that
this process never heard of).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from keyplane.core.ports import Clock


class DatabaseHealth:
    def __init__(self, clock: Clock, grace_seconds: float, *,
                 on_lost: Sequence[Callable[[], None]] = (),
                 on_recovered: Sequence[Callable[[], None]] = ()) -> None:
        self.clock = clock
        self.grace = timedelta(seconds=grace_seconds)
        self.down_since: datetime | None = None  # read without the lock on the hot path
        self.outages = 0  # how many began since start (for /metrics and logs)
        self.on_lost: list[Callable[[], None]] = list(on_lost)
        self.on_recovered: list[Callable[[], None]] = list(on_recovered)
        self._lock = threading.Lock()

    def reachable(self) -> None:
        """A round trip succeeded: the outage, if any, is over."""
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            self.down_since = None
        for callback in self.on_recovered:
            callback()

    def unreachable(self) -> None:
        """A connection failed or was lost: the outage starts now unless it already had."""
        if self.down_since is not None:
            return
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = self.clock.now()
            self.outages += 1
        for callback in self.on_lost:
            callback()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def cache_trusted(self) -> bool:
        """May a cached answer be given now? Always while the database answers; during an
        outage, only until the grace has run out."""
        since = self.down_since
        return since is None or self.clock.now() - since < self.grace

    def seconds_down(self) -> float:
        since = self.down_since
        return 0.0 if since is None else (self.clock.now() - since).total_seconds()
