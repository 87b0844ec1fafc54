"""Expiry reminders: ``key.expiring`` 14, 7 and 1 days before a key expires (by webhook, and
by email to the key's owner and the tenant's admins when SMTP is configured), and
``key.expired`` once it has.

Every ``keyplane serve`` and ``keyplane worker`` runs the scheduler on a timer; a database
lease lets one of them scan per interval, and each reminder is a row unique on (key,
threshold, expires_at) inserted in the transaction that writes the event and queues the mail.
Two schedulers racing (a lease that ran out, ``run(force=True)``, a second host) therefore
send each reminder once; a key renewed or rotated to a new expiry is reminded again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from keyplane.core.events import EXPIRED, REMINDER_DAYS, days_left, due_threshold, threshold_window
from keyplane.core.model import ApiKey, Role
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import SYSTEM
from keyplane.core.views import key_view, ts
from keyplane.services.context import Context
from keyplane.services.periodic import Timer, lease_owner

log = logging.getLogger("keyplane.expiry")

JOB = "expiry_reminders"
ACTOR = replace(SYSTEM, name="system:expiry")
BATCH = 1000  # keys per threshold per run; the next run takes the rest


class ExpiryRepo(Protocol):
    def expiring(self, threshold: int, after: datetime, until: datetime,
                 limit: int) -> list[str]: ...
    def claim_reminder(self, key_id: str, threshold: int, expires_at: datetime,
                       now: datetime, owner: str) -> bool: ...
    def claim_job(self, job: str, owner: str, now: datetime, until: datetime) -> bool: ...


@dataclass(frozen=True)
class Reminder:
    key_id: str
    threshold_days: int  # 0: key.expired
    expires_at: datetime
    emailed: int  # recipients


class ExpiryReminders:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], ExpiryRepo], *,
                 base_url: str, interval: timedelta = timedelta(minutes=15)) -> None:
        self.ctx = ctx
        self.repos = repos
        self.base_url = base_url.rstrip("/")
        self.interval = interval
        self.owner = lease_owner()
        self._timer = Timer("keyplane-expiry", interval, lambda: self.run(), log,
                            "expiry reminders run failed; will retry")

    def run(self, *, force: bool = False) -> list[Reminder] | None:
        """One scan: sends every reminder that is due and not yet sent. Takes the job's lease
        for an interval first; ``None`` when another instance holds it (``force``: scans
        anyway; each reminder is still sent once)."""
        now = self.ctx.clock.now()
        with self.ctx.uow() as uow:
            claimed = self.repos(uow).claim_job(JOB, self.owner, now, now + self.interval)
            uow.commit()
        if not claimed and not force:
            return None
        sent: list[Reminder] = []
        for threshold in (*REMINDER_DAYS, EXPIRED):
            after, until = threshold_window(threshold, self.ctx.clock.now())
            with self.ctx.uow(readonly=True) as uow:
                candidates = self.repos(uow).expiring(threshold, after, until, BATCH)
            for key_id in candidates:
                try:
                    done = self._remind(key_id)
                except Exception:  # one key's failure never stops the others
                    log.exception("expiry reminder failed for %s", key_id)
                    continue
                if done is not None:
                    sent.append(done)
        if sent:
            log.info("expiry reminders: %d sent", len(sent))
        return sent

    def _remind(self, key_id: str) -> Reminder | None:
        with self.ctx.uow() as uow:
            found = uow.keys.get_any(key_id)
            if found is None or found.tenant_id is None:
                return None
            key = uow.keys.get(found.tenant_id, key_id, for_update=True)
            if key is None or key.revoked_at is not None or key.expires_at is None:
                return None
            tenant = uow.tenants.get(found.tenant_id)
            if tenant is None or not tenant.enabled:
                return None
            now = self.ctx.clock.now()
            threshold = due_threshold(key.expires_at, now)  # decided again, holding the key
            if threshold is None or not self.repos(uow).claim_reminder(
                    key.id, threshold, key.expires_at, now, self.owner):
                return None
            left = days_left(key.expires_at, now)
            subject = {**key_view(key), "threshold_days": threshold, "days_left": left,
                       "rotate_url": self.key_url(key)}
            event = "key.expired" if threshold == EXPIRED else "key.expiring"
            if self.ctx.events is not None:
                self.ctx.events.emit(uow, event, tenant.id, subject, ACTOR.actor)
            emailed = 0
            if threshold != EXPIRED:
                to = self._recipients(uow, tenant.id, key.owner_id)
                if self.ctx.mail_after_commit(uow, to, *self.message(key, tenant.name, now)):
                    emailed = len(to)
            uow.commit()
        return Reminder(key.id, threshold, key.expires_at, emailed)

    def key_url(self, key: ApiKey) -> str:
        return f"{self.base_url}/keys/{key.id}"

    def message(self, key: ApiKey, tenant_name: str, now: datetime) -> tuple[str, str]:
        """The reminder's subject and text: which integration stops, when, and how to
        rotate."""
        assert key.expires_at is not None
        left = days_left(key.expires_at, now)
        when = "tomorrow" if left <= 1 else f"in {left} days"
        subject = f"API key \"{key.name}\" expires {when}"
        about = f" ({key.description})" if key.description else ""
        text = "\n".join([
            f"The API key \"{key.name}\"{about} of {tenant_name} (Location ID "
            f"{key.tenant_id}) expires {when}, on {ts(key.expires_at)} (UTC).",
            "",
            "Whatever uses it (the integration it was made for) will stop working then: every "
            "request with it will be refused.",
            "",
            "Rotate it before then and give the new key to the integration:",
            f"  - in the console: {self.key_url(key)} (Rotate)",
            f"  - with the CLI:   keyplane keys rotate {key.id} --tenant {key.tenant_id}",
            f"  - with the API:   POST {self.base_url}/v1/keys/{key.id}/rotate",
            "",
            f"Key id: {key.id} (starts with {key.prefix}_{key.start}…)",
            "You receive this because you own this key or administer this account.",
        ])
        return subject, text

    @staticmethod
    def _recipients(uow: UnitOfWork, tenant_id: str, owner_id: str | None) -> list[str]:
        """The key's owner (a member with an email) and the tenant's enabled admins."""
        to: list[str] = []
        owner = uow.principals.get(tenant_id, owner_id) if owner_id else None
        if owner is not None and owner.enabled and owner.email:
            to.append(owner.email)
        cursor = None
        while True:
            page = uow.principals.page(tenant_id, kind="member", limit=200, cursor=cursor)
            to += [p.email for p in page.items
                   if p.role is Role.ADMIN and p.enabled and p.email and p.email not in to]
            cursor = page.next_cursor
            if cursor is None:
                return to

    # -- the timer ---------------------------------------------------------------------------

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
