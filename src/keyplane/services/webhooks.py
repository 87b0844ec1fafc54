"""Webhook endpoints (create, read, edit, delete, rotate the signing secret, deliveries,
redeliver) and the outbox every audited change writes its event to.

The signing secret (``whsec_…``) is shown once, at creation and at rotation; it is stored sealed
(see ``keyplane/sealing.py``) because the worker must read it back to sign. After a rotation the
old secret keeps signing beside the new one (two signatures in ``webhook-signature``) until
its grace ends, so receivers can switch without missing a delivery.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from keyplane.core import ids
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.model import Page
from keyplane.core.ports import Clock, Resolver, Sealer, UnitOfWork, WebhookRepos
from keyplane.core.rights import Caller
from keyplane.core.views import ts, webhook_view
from keyplane.core.webhooks import (
    EVENT_TYPES,
    SECRET_PREFIX,
    Delivery,
    DeliveryStatus,
    RetryPolicy,
    Webhook,
    check_url,
    event_patterns,
    refused_address,
    subscribed,
)
from keyplane.services import validate as v
from keyplane.services.context import Context

CREATE_FIELDS = ("url", "description", "events", "enabled")
DEFAULT_SECRET_GRACE = 24 * 3600
MAX_SECRET_GRACE = 7 * 86400


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class Outbox:
    """The :class:`~keyplane.core.ports.EventSink`: one event row and one delivery per
    subscribed, enabled endpoint, in the transaction of the change. Listeners (the delivery
    worker of this process) hear of new deliveries after the commit."""

    def __init__(self, repos: WebhookRepos, clock: Clock, policy: RetryPolicy) -> None:
        self.repos = repos
        self.clock = clock
        self.policy = policy
        self.listeners: list[Callable[[], None]] = []

    def emit(self, uow: UnitOfWork, event_type: str, tenant_id: str,
             subject: dict[str, Any], actor: str) -> str | None:
        """Queues a catalogue event for every enabled endpoint subscribed to it; returns the
        event id (``None``: nobody subscribed, nothing written)."""
        if event_type not in EVENT_TYPES:
            return None
        targets = [w for w in self.repos(uow).subscribers(tenant_id)
                   if subscribed(w.events, event_type)]
        return self._write(uow, event_type, tenant_id,
                           {"tenant_id": tenant_id, "object": subject, "actor": actor}, targets)

    def emit_to(self, uow: UnitOfWork, event_type: str, tenant_id: str, data: dict[str, Any],
                webhook_ids: Iterable[str]) -> tuple[str | None, list[str]]:
        """Queues an event for these endpoints of the tenant (enabled ones; others' ids and
        deleted ones are skipped), whatever they subscribe to: automations name their
        webhooks. Returns the event id and the webhooks it was queued for."""
        wanted = set(webhook_ids)
        targets = [w for w in self.repos(uow).subscribers(tenant_id) if w.id in wanted]
        return self._write(uow, event_type, tenant_id, data, targets), [w.id for w in targets]

    def _write(self, uow: UnitOfWork, event_type: str, tenant_id: str, data: dict[str, Any],
               targets: list[Webhook]) -> str | None:
        if not targets:
            return None
        repo = self.repos(uow)
        now = self.clock.now()
        event_id = ids.new_id("msg")
        payload = json.dumps({"type": event_type, "id": event_id, "timestamp": ts(now),
                              "data": data}, separators=(",", ":"), default=str)
        repo.add_event(event_id, tenant_id, event_type, payload, now)
        for w in targets:
            repo.add_delivery(Delivery(
                id=ids.new_id("dlv"), webhook_id=w.id, tenant_id=tenant_id, event_id=event_id,
                event_type=event_type, status=DeliveryStatus.PENDING, attempts=0,
                created_at=now, next_attempt_at=now, deadline=now + self.policy.window))
        uow.after_commit(self.notify)
        return event_id

    def subscribe(self, listener: Callable[[], None]) -> None:
        """``listener`` is called after every commit that queued deliveries (this process)."""
        self.listeners.append(listener)

    def notify(self) -> None:
        for listener in list(self.listeners):
            listener()


@dataclass(frozen=True)
class IssuedWebhook:
    webhook: Webhook
    secret: str  # shown once


class WebhookService:
    def __init__(self, ctx: Context, repos: WebhookRepos, sealer: Sealer, resolver: Resolver,
                 outbox: Outbox, *, allow_private: bool) -> None:
        self.ctx = ctx
        self.repos = repos
        self.sealer = sealer
        self.resolver = resolver
        self.outbox = outbox
        self.allow_private = allow_private

    # -- rules -------------------------------------------------------------------------------

    def check_target(self, url: Any) -> str:
        """The URL if a webhook may point at it: scheme, no credentials, and (unless private
        targets are allowed) every address its host resolves to is public."""
        target = check_url(url, allow_private=self.allow_private)
        assert isinstance(url, str)
        if self.allow_private:
            return url
        try:
            addresses = self.resolver.resolve(target.host, target.port)
        except OSError:
            raise ValidationError(f"url: the host {target.host!r} does not resolve",
                                  field="url") from None
        for address in addresses:
            why = refused_address(address)
            if why is not None:
                raise ValidationError(
                    f"url: {target.host} resolves to {address}, {why}; webhooks may not "
                    "target private networks", field="url")
        return url

    def backlog(self) -> tuple[int, float]:
        """For /metrics: deliveries waiting (every tenant), and the oldest one's age in
        seconds (0 when none waits)."""
        with self.ctx.uow(readonly=True) as uow:
            pending, oldest = self.repos(uow).backlog()
        age = (self.ctx.clock.now() - oldest).total_seconds() if oldest is not None else 0.0
        return pending, max(0.0, age)

    def _tenant(self, caller: Caller, tenant_id: str | None, *, write: bool) -> str:
        tid = caller.tenant_for(tenant_id)
        caller.require("tenant:write" if write else "tenant:read")
        return tid

    def _load(self, uow: UnitOfWork, tid: str, webhook_id: str, *,
              for_update: bool = False) -> Webhook:
        w = self.repos(uow).get(tid, webhook_id, for_update=for_update)
        if w is None:
            raise NotFound("no such webhook")
        return w

    def _secret_of(self, webhook_id: str) -> tuple[str, str]:
        raw = new_secret()
        return raw, self.sealer.seal(raw, webhook_id)

    # -- use cases ---------------------------------------------------------------------------

    def create(self, caller: Caller, tenant_id: str | None, body: dict[str, Any]) -> (
        IssuedWebhook
    ):
        tid = self._tenant(caller, tenant_id, write=True)
        v.only_fields(body, CREATE_FIELDS)
        url = self.check_target(body.get("url"))
        description = v.text(body.get("description"), "description",
                             max_len=v.MAX_DESCRIPTION, required=False)
        events = event_patterns(body.get("events"))
        enabled = v.boolean(body.get("enabled", True), "enabled")
        now = self.ctx.clock.now()
        webhook_id = ids.new_id("whk")
        raw, sealed = self._secret_of(webhook_id)
        w = Webhook(id=webhook_id, tenant_id=tid, url=url, description=description,
                    events=events, enabled=enabled, secret=sealed, created_at=now,
                    updated_at=now, created_by=caller.actor)
        with self.ctx.uow() as uow:
            if uow.tenants.get(tid) is None:
                raise NotFound("no such tenant")
            self.repos(uow).add(w)
            self.ctx.audit(uow, caller, "webhook.created", w.id, tenant_id=tid, url=url,
                           events=events)
            uow.commit()
        return IssuedWebhook(w, raw)

    def get(self, caller: Caller, tenant_id: str | None, webhook_id: str) -> Webhook:
        tid = self._tenant(caller, tenant_id, write=False)
        with self.ctx.uow(readonly=True) as uow:
            return self._load(uow, tid, webhook_id)

    def list(self, caller: Caller, tenant_id: str | None, *, limit: int,
             cursor: str | None) -> Page[Webhook]:
        tid = self._tenant(caller, tenant_id, write=False)
        with self.ctx.uow(readonly=True) as uow:
            return self.repos(uow).page(tid, limit=limit, cursor=cursor)

    def update(self, caller: Caller, tenant_id: str | None, webhook_id: str,
               body: dict[str, Any]) -> Webhook:
        """Edit; ``enabled: true`` also clears why it was disabled and its failure streak,
        and its pending deliveries resume."""
        tid = self._tenant(caller, tenant_id, write=True)
        v.only_fields(body, CREATE_FIELDS)
        url = self.check_target(body["url"]) if "url" in body else None
        with self.ctx.uow() as uow:
            w = self._load(uow, tid, webhook_id, for_update=True)
            before = webhook_view(w)
            if url is not None:
                w.url = url
            if "description" in body:
                w.description = v.text(body["description"], "description",
                                       max_len=v.MAX_DESCRIPTION, required=False)
            if "events" in body:
                w.events = event_patterns(body["events"])
            if "enabled" in body:
                w.enabled = v.boolean(body["enabled"], "enabled")
                if w.enabled:
                    w.disabled_reason = w.disabled_at = w.failing_since = None
                    w.consecutive_failures = 0
            w.updated_at = self.ctx.clock.now()
            self.repos(uow).update(w)
            self.ctx.audit(uow, caller, "webhook.updated", w.id, tenant_id=tid,
                           fields=sorted(body), subject=webhook_view(w), before=before)
            uow.commit()
        if w.enabled:
            self.outbox.notify()  # resumed deliveries are due now
        return w

    def delete(self, caller: Caller, tenant_id: str | None, webhook_id: str) -> None:
        tid = self._tenant(caller, tenant_id, write=True)
        with self.ctx.uow() as uow:
            w = self._load(uow, tid, webhook_id, for_update=True)
            self.repos(uow).delete(tid, w.id)
            self.ctx.audit(uow, caller, "webhook.deleted", w.id, tenant_id=tid, url=w.url)
            uow.commit()

    def rotate_secret(self, caller: Caller, tenant_id: str | None, webhook_id: str,
                      body: dict[str, Any]) -> IssuedWebhook:
        """A new signing secret; the current one keeps signing beside it for the grace
        (default 24 h, 0: stops now). A rotation during a grace ends the older secret."""
        tid = self._tenant(caller, tenant_id, write=True)
        v.only_fields(body, ("grace_period_seconds",))
        grace = v.integer(body.get("grace_period_seconds", DEFAULT_SECRET_GRACE),
                          "grace_period_seconds", minimum=0, maximum=MAX_SECRET_GRACE)
        with self.ctx.uow() as uow:
            w = self._load(uow, tid, webhook_id, for_update=True)
            now = self.ctx.clock.now()
            raw, sealed = self._secret_of(w.id)
            if grace:
                w.previous_secret = w.secret
                w.previous_secret_expires_at = now + timedelta(seconds=grace)
            else:
                w.previous_secret = w.previous_secret_expires_at = None
            w.secret = sealed
            w.updated_at = now
            self.repos(uow).update(w)
            self.ctx.audit(uow, caller, "webhook.secret_rotated", w.id, tenant_id=tid,
                           grace_period_seconds=grace)
            uow.commit()
        return IssuedWebhook(w, raw)

    def deliveries(self, caller: Caller, tenant_id: str | None, webhook_id: str, *,
                   status: str | None, limit: int, cursor: str | None) -> Page[Delivery]:
        tid = self._tenant(caller, tenant_id, write=False)
        if status is not None and status not in {s.value for s in DeliveryStatus}:
            raise ValidationError("status: one of pending, succeeded, failed", field="status")
        with self.ctx.uow(readonly=True) as uow:
            w = self._load(uow, tid, webhook_id)
            return self.repos(uow).deliveries(w.id, status=status, limit=limit, cursor=cursor)

    def redeliver(self, caller: Caller, tenant_id: str | None, webhook_id: str,
                  delivery_id: str) -> Delivery:
        """Send a delivery again (same event, same ``webhook-id``), with a fresh retry
        window."""
        tid = self._tenant(caller, tenant_id, write=True)
        with self.ctx.uow() as uow:
            w = self._load(uow, tid, webhook_id)
            repo = self.repos(uow)
            d = repo.delivery(w.id, delivery_id)
            if d is None:
                raise NotFound("no such delivery")
            if not w.enabled:
                raise Conflict("the webhook is disabled; enable it first (PATCH enabled: true)",
                               code="webhook_disabled")
            now = self.ctx.clock.now()
            if d.lease_until is not None and d.lease_until > now:
                raise Conflict("this delivery is being sent right now; try again in a minute",
                               code="delivery_in_progress")
            d.status = DeliveryStatus.PENDING
            d.next_attempt_at = now
            d.deadline = now + self.outbox.policy.window
            repo.update_delivery(d)
            self.ctx.audit(uow, caller, "webhook.redelivered", w.id, tenant_id=tid,
                           delivery_id=d.id, event_id=d.event_id)
            uow.after_commit(self.outbox.notify)
            uow.commit()
        return d
