"""The delivery worker: claims due deliveries, signs and sends them, records the outcome.

It runs as a thread in every ``keyplane serve`` process and in ``keyplane worker``. All of its
state is in the database: a delivery is claimed with a lease (``lease_until``) that outlives
the attempt; a worker killed mid-attempt leaves the lease to expire and another worker (or the
restarted one) sends it again with the same ``webhook-id``. Delivery is at least once.

Failures are retried with exponential backoff and jitter until the delivery's window (24 h by
default) ends. An endpoint whose every attempt failed for ``disable_after`` (24 h by default,
counted from the first event it failed to take) is disabled with a reason the admin sees, and a
``webhook.disabled`` event goes to the tenant's other endpoints.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from standardwebhooks import Webhook as Signer

from keyplane.core.ports import (
    Clock,
    Sealer,
    SystemClock,
    UnitOfWork,
    WebhookRepos,
    WebhookSender,
)
from keyplane.core.rights import SYSTEM
from keyplane.core.views import webhook_view
from keyplane.core.webhooks import Claimed, DeliveryStatus, Outcome, RetryPolicy
from keyplane.services.context import Context
from keyplane.services.webhooks import Outbox

log = logging.getLogger("keyplane.webhooks")
PRUNE_EVERY_SECONDS = 3600.0


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} hours" if hours != 1 else "1 hour"


class DeliveryWorker:
    def __init__(self, ctx: Context, repos: WebhookRepos, outbox: Outbox, sender: WebhookSender,
                 sealer: Sealer, policy: RetryPolicy, *, lease: timedelta, concurrency: int,
                 poll_seconds: float, retention: timedelta = timedelta(days=30),
                 wall: Clock | None = None) -> None:
        self.ctx = ctx
        self.repos = repos
        self.sender = sender
        self.sealer = sealer
        self.policy = policy
        self.lease = lease
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.retention = retention
        self._next_prune = 0.0  # time.monotonic() of the next pruning
        # webhook-timestamp is real time (receivers check it against theirs), whatever clock
        # schedules the retries
        self.wall = wall or SystemClock()
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight = 0  # claimed and not yet recorded
        self._done: list[tuple[Claimed, Outcome]] = []
        self._lock = threading.Lock()
        outbox.subscribe(self._wake.set)

    # -- one delivery --------------------------------------------------------------------------

    def claim(self, limit: int) -> list[Claimed]:
        now = self.ctx.clock.now()
        with self.ctx.uow(readonly=True) as uow:  # idle polls take no write lock
            if not self.repos(uow).due(now):
                return []
        with self.ctx.uow() as uow:
            claimed = self.repos(uow).claim(self.owner, now, now + self.lease, limit)
            uow.commit()
        return claimed

    def headers(self, c: Claimed) -> dict[str, str]:
        """Standard Webhooks headers; one signature per live secret (new one first)."""
        at = self.wall.now()
        signatures = [Signer(self.sealer.unseal(s, c.webhook_id)).sign(c.event_id, at, c.payload)
                      for s in c.secrets]
        return {"webhook-id": c.event_id, "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": " ".join(signatures), "content-type": "application/json"}

    def attempt(self, c: Claimed) -> Outcome:
        try:
            headers = self.headers(c)
        except Exception:  # e.g. its pepper was removed: say so, never the secret
            log.exception("webhook %s: cannot open its signing secret", c.webhook_id)
            return Outcome(None, 0, "the signing secret cannot be decrypted with the "
                                    "configured peppers")
        return self.sender.send(c.url, headers, c.payload.encode())

    def record(self, results: list[tuple[Claimed, Outcome]]) -> None:
        """Records attempts in one transaction."""
        self.exchange(results, 0)

    def exchange(self, results: list[tuple[Claimed, Outcome]], limit: int) -> list[Claimed]:
        """Records finished attempts and claims up to ``limit`` more, in one transaction: one
        write lock per round (SQLite has a single writer). A delivery whose lease was lost
        (and taken over) is left to its new owner."""
        if not results:
            return self.claim(limit) if limit else []
        now = self.ctx.clock.now()
        healthy: set[str] = set()
        with self.ctx.uow() as uow:
            repo = self.repos(uow)
            for c, outcome in results:
                if outcome.ok:
                    status, retry_at = DeliveryStatus.SUCCEEDED, None
                else:
                    retry_at = self.policy.next_attempt(now, c.attempts + 1, c.deadline)
                    status = DeliveryStatus.PENDING if retry_at else DeliveryStatus.FAILED
                if not repo.record(c.delivery_id, self.owner, outcome, now, status=status,
                                   next_attempt_at=retry_at):
                    continue
                if outcome.ok:
                    healthy.add(c.webhook_id)
                else:
                    healthy.discard(c.webhook_id)
                    self._failed(uow, c, outcome, now)
            for webhook_id in sorted(healthy):  # ends a failure streak
                repo.mark_success(webhook_id)
            claimed = repo.claim(self.owner, now, now + self.lease, limit) if limit else []
            uow.commit()
        return claimed

    def _failed(self, uow: UnitOfWork, c: Claimed, outcome: Outcome, now: datetime) -> None:
        repo = self.repos(uow)
        w = repo.get(c.tenant_id, c.webhook_id, for_update=True)
        if w is None:
            return
        w.consecutive_failures += 1
        first_due = c.deadline - self.policy.window  # when this event was first due
        if w.failing_since is None or first_due < w.failing_since:
            w.failing_since = first_due
        if w.enabled and self.policy.should_disable(w.failing_since, now):
            w.enabled = False
            w.disabled_at = now
            w.disabled_reason = (
                f"every delivery attempt failed for {_hours(self.policy.disable_after)} "
                f"({w.consecutive_failures} attempts; last: {outcome.describe()})")[:500]
            repo.update(w)
            self.ctx.audit(uow, SYSTEM, "webhook.disabled", w.id,
                           tenant_id=w.tenant_id, reason=w.disabled_reason,
                           subject=webhook_view(w))
            log.warning("webhook %s disabled: %s", w.id, w.disabled_reason)
        else:
            repo.update(w)

    def prune(self) -> int:
        """Forgets deliveries finished longer than ``retention`` ago (and their events)."""
        with self.ctx.uow() as uow:
            removed = self.repos(uow).prune(self.ctx.clock.now() - self.retention)
            uow.commit()
        return removed

    def _maybe_prune(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        try:
            removed = self.prune()
            if removed:
                log.info("webhook deliveries: %d finished ones pruned", removed)
        except Exception:
            log.exception("webhook deliveries: pruning failed; will try again")

    # -- the loop --------------------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Claims and sends what is due now, until nothing is (tests, benchmarks)."""
        total = 0
        with ThreadPoolExecutor(self.concurrency) as pool:
            while claimed := self.claim(self.concurrency):
                self.record(list(zip(claimed, pool.map(self.attempt, claimed), strict=True)))
                total += len(claimed)
        return total

    def _one(self, c: Claimed) -> None:
        try:
            outcome = self.attempt(c)
        except Exception as exc:  # a bug, not the receiver: retried like a failure
            log.exception("webhook delivery %s failed unexpectedly", c.delivery_id)
            outcome = Outcome(None, 0, f"internal error: {type(exc).__name__}")
        with self._lock:
            self._done.append((c, outcome))
        self._wake.set()

    def _flush(self) -> None:
        """Records finished attempts, many per transaction."""
        with self._lock:
            done, self._done = self._done, []
        if not done:
            return
        try:
            self.record(done)
        except Exception:  # their leases expire and they are sent again
            log.exception("webhook deliveries: recording %d attempts failed", len(done))
        finally:
            with self._lock:
                self._inflight -= len(done)

    def _run(self) -> None:
        """Keeps up to twice ``concurrency`` deliveries claimed (half of them queued for the
        pool), claiming in batches; the lease covers a queued wait plus the attempt. Each
        round records what finished and claims more in one transaction."""
        assert self._pool is not None
        capacity = 2 * self.concurrency
        while not self._stop.is_set():
            self._wake.clear()
            with self._lock:
                done, self._done = self._done, []
                inflight = self._inflight - len(done)
            free = capacity - inflight
            limit = free if free >= self.concurrency or inflight == 0 else 0
            claimed: list[Claimed] = []
            try:
                claimed = self.exchange(done, limit)
            except Exception:  # unrecorded attempts are sent again when their leases expire
                log.exception("webhook deliveries: recording or claiming failed; retrying")
                self._stop.wait(self.poll_seconds)
            finally:
                with self._lock:
                    self._inflight += len(claimed) - len(done)
            for c in claimed:
                self._pool.submit(self._one, c)
            self._maybe_prune()
            if not claimed and not done:
                self._wake.wait(self.poll_seconds)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="keyplane-webhook")
        self._thread = threading.Thread(target=self._run, name="keyplane-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops claiming; attempts under way finish and are recorded."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout=30)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._flush()
