"""Uses the middleware answered from its own cache, reported to Keyplane in batches
(``POST /v1/usage``), so that a key's usage counts and ``last_used_at`` cover every request it
served and not only the verifications Keyplane was asked for.

Counting a use is one dict update on the request path. Every ``interval`` seconds, and at
shutdown, the counts are sent; what could not be delivered (Keyplane unreachable, 5xx, 429) is
kept for the next report, up to ``MAX_PENDING`` distinct keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import httpx2

log = logging.getLogger("keyplane.sdk")

MAX_PENDING = 100_000  # distinct keys kept while Keyplane cannot be told
BATCH = 1000  # ids per report: Keyplane's own limit
_RETRY = frozenset({429, 500, 502, 503, 504})


class UsageReporter:
    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError("usage_report_seconds must not be negative")
        self.interval = interval
        # key id -> uses; the middleware adds to it (``pending[key_id] += 1``)
        self.pending: defaultdict[str, int] = defaultdict(int)
        self.dropped = 0  # uses that could not be kept (more than MAX_PENDING keys)
        self._http: httpx2.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error_log = 0.0

    def start(self, http: httpx2.AsyncClient) -> None:
        """Report through ``http`` (the middleware's client, authenticated as the verifier)
        every ``interval`` seconds; ``interval`` 0 never reports on a timer."""
        self._http = http
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="keyplane-usage")

    async def stop(self) -> None:
        """Stop the timer and send what is pending (a graceful stop loses nothing)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
        self._http = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # never let the timer die: the next report retries
                log.exception("Keyplane usage report failed")

    async def flush(self) -> int:
        """Sends the pending uses now; returns how many were delivered."""
        http = self._http
        if http is None or not self.pending:
            return 0
        items, self.pending = list(self.pending.items()), defaultdict(int)
        delivered = 0
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            status = None
            with contextlib.suppress(httpx2.HTTPError):
                status = (await http.post("/v1/usage", json={"uses": [
                    {"key_id": k, "count": n} for k, n in chunk]})).status_code
            if status == 200:
                delivered += sum(n for _, n in chunk)
            elif status is None or status in _RETRY:
                self._keep(chunk)
                self._log(f"Keyplane did not take a usage report ({status or 'unreachable'});"
                          " keeping the counts for the next one")
            else:  # the verifier key itself is refused: retrying cannot help
                self._log(f"Keyplane refused a usage report with HTTP {status}; "
                          "check the verifier key (keys:verify)")
        return delivered

    def _keep(self, chunk: list[tuple[str, int]]) -> None:
        pending = self.pending
        for key_id, n in chunk:
            if key_id in pending or len(pending) < MAX_PENDING:
                pending[key_id] += n
            else:
                self.dropped += n

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.warning(message)
