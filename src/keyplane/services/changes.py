"""The change feed: what changed, in order, for verifiers in other processes.

Every use case records its changes in the durable ``changes`` log inside its transaction
(``Context.changed``) and publishes them on the in-process bus after commit. The feed reads that
log, in every worker process:

* to invalidate this process's caches for changes made by *other* processes: the bound when
  Redis is not configured (one poll period), and a safety net when it is;
* to serve the ordered stream that SDKs follow (``GET /v1/changes``).

Positions are the log's ids. On PostgreSQL an id is taken from a sequence when the row is
inserted but becomes visible only at commit, so a reader may see id 11 before id 10, and the id
of a rolled-back transaction never appears at all. The feed therefore delivers an invalidation
as soon as it sees a row, but its *stable head* (the position the stream reports) only passes a
missing id once every earlier row has arrived or the row after the hole has waited
``gap_seconds``: a client resuming after position N never misses a change that committed late.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from keyplane.core.changes import Change, remote_delivery
from keyplane.core.ports import ChangeBus, ChangeSource

log = logging.getLogger("keyplane.changes")


@dataclass(frozen=True, slots=True)
class Batch:
    items: list[Change]
    position: int  # everything up to here has been looked at (visible or not)


class ChangeFeed:
    PAGE = 1000
    KEEP = 20_000  # log rows kept by pruning: more than any stream is replayed (10,000)
    PRUNE_EVERY = 3600.0  # seconds between prunes of the durable log, per process

    def __init__(self, source: ChangeSource, bus: ChangeBus, *, period: float,
                 gap_seconds: float = 5.0, buffer_size: int = 10_000,
                 timer: Callable[[], float] = time.monotonic,
                 lag_observer: Callable[[str, float], None] | None = None) -> None:
        self.source = source
        self.bus = bus
        self._period = period
        self.gap_seconds = gap_seconds
        self.buffer_size = buffer_size
        self.timer = timer
        self._stable = 0
        self._floor = 0  # the buffer holds every change in (floor, stable]
        self._items: list[Change] = []
        self._pending: dict[int, tuple[Change, float]] = {}
        self._refresh_lock = threading.Lock()  # one reader of the log at a time
        self._lock = threading.Lock()  # stable head, floor and buffer change together
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
        self._failures = 0
        self._last_prune = timer()
        self.started = False
        self.subscribers = 0  # open GET /v1/changes event streams (for /metrics)
        # called with ("log", seconds) for each change read, from its time in the log
        self.lag_observer = lag_observer
        bus.subscribe(self._on_local)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        head = self.source.head()
        with self._refresh_lock, self._lock:
            if not self.started:
                self._stable = self._floor = head
            self.started = True
        self._stop.clear()
        self.closing.clear()
        self._thread = threading.Thread(target=self._run, name="keyplane-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.close_streams()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def close_streams(self) -> None:
        """Ends open change streams and long polls (the server is shutting down)."""
        self.closing.set()
        self._notify()

    @property
    def period(self) -> float:
        return self._period

    @period.setter
    def period(self, seconds: float) -> None:
        self._period = seconds
        self._wake.set()

    def wake(self) -> None:
        """Read the log soon (something changed in this process or arrived from Redis)."""
        self._wake.set()

    def _on_local(self, kind: str, ref: str) -> None:
        if threading.current_thread() is not self._thread:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._period)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except Exception as exc:
                self._failures += 1
                if self._failures == 1 or self._failures % 100 == 0:
                    log.warning("reading the change log failed (%d in a row): %s",
                                self._failures, type(exc).__name__)
            else:
                if self._failures:
                    log.info("reading the change log works again")
                self._failures = 0
            self._maybe_prune()

    def _maybe_prune(self) -> None:
        """Keeps the durable log from growing for ever (every worker may do it; it is
        idempotent)."""
        prune = getattr(self.source, "prune", None)
        now = self.timer()
        if prune is None or now - self._last_prune < self.PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            gone = prune(self.KEEP)
        except Exception as exc:
            log.warning("pruning the change log failed: %s", type(exc).__name__)
        else:
            if gone:
                log.info("pruned %d old rows from the change log", gone)

    # -- reading the log ---------------------------------------------------------------------

    @property
    def stable_head(self) -> int:
        return self._stable

    def refresh(self) -> int:
        """Reads new rows, invalidates this process's caches for them and advances the stable
        head. Returns the number of rows seen for the first time."""
        with self._refresh_lock:
            if not self.started:
                head = self.source.head()
                with self._lock:
                    self._stable = self._floor = head
                    self.started = True
                return 0
            fresh: list[Change] = []
            cursor = self._stable
            while True:
                page = self.source.read(cursor, self.PAGE)
                for change in page:
                    if change.position > self._stable and change.position not in self._pending:
                        fresh.append(change)
                if len(page) < self.PAGE:
                    break
                cursor = page[-1].position
            now = self.timer()
            for change in fresh:
                self._pending[change.position] = (change, now)
            if fresh:
                with remote_delivery():
                    for change in fresh:
                        self.bus.publish(change.kind, change.ref)
                self._observe_lag(fresh)
            advanced = self._advance(now)
        if advanced:
            self._notify()
        return len(fresh)

    def _observe_lag(self, fresh: list[Change]) -> None:
        observer = self.lag_observer
        if observer is None:
            return
        applied = datetime.now(UTC)
        for change in fresh:
            if change.at is not None:
                at = change.at if change.at.tzinfo else change.at.replace(tzinfo=UTC)
                observer("log", (applied - at).total_seconds())

    def _advance(self, now: float) -> bool:
        start = self._stable
        pending = self._pending
        while pending:
            nxt = self._stable + 1
            found = pending.pop(nxt, None)
            if found is not None:
                with self._lock:  # readers see the item no later than the head that covers it
                    self._items.append(found[0])
                    self._stable = nxt
                continue
            lowest = min(pending)
            if now - pending[lowest][1] < self.gap_seconds:
                break
            log.debug("change positions %d..%d never appeared; moving on", nxt, lowest - 1)
            with self._lock:  # a rolled-back transaction, or one far too slow to commit
                self._stable = lowest - 1
        if len(self._items) > 2 * self.buffer_size:
            with self._lock:
                cut = len(self._items) - self.buffer_size
                self._floor = self._items[cut - 1].position
                self._items = self._items[cut:]
        return self._stable != start

    def read(self, after: int, tenant_id: str | None, limit: int = 500) -> Batch | None:
        """Visible changes after ``after`` up to the stable head, from memory; ``None`` when
        ``after`` is older than what memory holds (then use :meth:`read_stored`)."""
        with self._lock:
            stable, floor = self._stable, self._floor
            if after < floor:
                return None
            if after >= stable:
                return Batch([], after)
            start = bisect.bisect_right(self._items, after, key=lambda c: c.position)
            candidates = self._items[start:]
        out: list[Change] = []
        for change in candidates:
            if change.visible_to(tenant_id):
                out.append(change)
                if len(out) == limit:
                    return Batch(out, change.position)
        return Batch(out, stable)

    def read_stored(self, after: int, tenant_id: str | None, limit: int = 500) -> Batch:
        """Like :meth:`read`, from the database (blocking: call it from a thread)."""
        stable = self._stable
        out: list[Change] = []
        cursor = after
        while cursor < stable:
            page = self.source.read(cursor, self.PAGE)
            for change in page:
                if change.position > stable:
                    return Batch(out, stable)
                cursor = change.position
                if change.visible_to(tenant_id):
                    out.append(change)
                    if len(out) == limit:
                        return Batch(out, cursor)
            if len(page) < self.PAGE:
                break
        return Batch(out, max(after, stable))

    # -- waiting (event loop side) -----------------------------------------------------------

    async def wait(self, after: int, timeout: float) -> None:
        """Returns when the stable head passes ``after``, the feed closes, or ``timeout``."""
        if self._stable > after or self.closing.is_set() or timeout <= 0:
            return
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._waiters_lock:
            self._waiters.add(entry)
        try:
            if self._stable > after or self.closing.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry[1].wait(), timeout)
        finally:
            with self._waiters_lock:
                self._waiters.discard(entry)

    def _notify(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)
