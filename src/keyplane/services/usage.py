"""Usage recording without a database write per request: batched in memory, flushed on a
timer and at shutdown."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime

from keyplane.core.ports import UnitOfWork
from keyplane.services.context import Context

log = logging.getLogger("keyplane.usage")


class UsageRecorder:
    def __init__(self, ctx: Context, interval: float = 5.0) -> None:
        self.ctx = ctx
        self.interval = interval
        self._last_used: dict[str, datetime] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, key_id: str, at: datetime, outcome: str) -> None:
        # dict assignment and Counter increment are cheap; the lock keeps flush consistent
        with self._lock:
            if outcome == "VALID":
                self._last_used[key_id] = at
            self._counts[(key_id, outcome)] += 1

    def flush(self) -> int:
        with self._lock:
            last_used, self._last_used = self._last_used, {}
            self._counts = Counter()
        if not last_used:
            return 0
        try:
            uow: UnitOfWork
            with self.ctx.uow() as uow:
                uow.keys.touch(last_used)
                uow.commit()
        except Exception:
            log.exception("usage flush failed; will retry")
            with self._lock:
                for k, at in last_used.items():
                    if k not in self._last_used or self._last_used[k] < at:
                        self._last_used[k] = at
            return 0
        return len(last_used)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="keyplane-usage", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()
