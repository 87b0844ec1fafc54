"""What every use case needs: the unit-of-work factory, the clock, the hasher, the catalogue."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keyplane.core import ids
from keyplane.core.changes import GENERIC_KINDS, ChangeKind
from keyplane.core.model import AuditEvent
from keyplane.core.outage import DatabaseHealth
from keyplane.core.ports import Clock, EventSink, Listener, Mailer, NoMailer, UnitOfWork
from keyplane.core.rights import Caller
from keyplane.core.scopes import Catalogue
from keyplane.core.tokens import Hasher

log = logging.getLogger("keyplane.mail")


class LocalBus:
    """In-process invalidation: listeners (caches) hear of every change after its commit.

    Cross-process fan-out (Redis, change polling) subscribes here and republishes.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, kind: ChangeKind, ref: str) -> None:
        for listener in list(self._listeners):
            listener(kind, ref)


@dataclass
class Context:
    uow: Callable[..., UnitOfWork]
    clock: Clock
    hasher: Hasher
    key_prefix: str = "kp"
    bus: LocalBus = field(default_factory=LocalBus)
    events: EventSink | None = None  # the webhook outbox: audited changes become events
    mailer: Mailer = field(default_factory=NoMailer)  # KEYPLANE_SMTP_URL, or nothing is sent
    # is the database answering, and may cached verifications stand in for it (core/outage.py)
    health: DatabaseHealth | None = None
    _catalogue: Catalogue | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.bus.subscribe(self._on_change)

    def _on_change(self, kind: ChangeKind, ref: str) -> None:
        if kind in GENERIC_KINDS:
            self._catalogue = None

    def catalogue(self) -> Catalogue:
        cat = self._catalogue
        if cat is None:
            with self.uow(readonly=True) as uow:
                cat = Catalogue(uow.scopes.all())
            self._catalogue = cat
        return cat

    def changed(self, uow: UnitOfWork, kind: ChangeKind, ref: str) -> None:
        """Record a change durably in this transaction and publish it after commit."""
        uow.changes.append(kind, ref)
        uow.after_commit(lambda: self.bus.publish(kind, ref))

    def mail_after_commit(
        self, uow: UnitOfWork, to: Sequence[str], subject: str, text: str
    ) -> bool:
        """Send an email once this transaction commits (never for a rolled-back change).
        Returns whether a mail server is configured. A failed send is logged without the
        recipients or the text (it may hold a one-time link) and never undoes the change."""
        recipients = [a for a in dict.fromkeys(to) if a]
        if not self.mailer.enabled or not recipients:
            return self.mailer.enabled
        mailer = self.mailer

        def send() -> None:
            try:
                mailer.send(recipients, subject, text)
            except Exception as exc:  # a mail outage must not fail the change that committed
                log.warning("mail_failed recipients=%d subject=%r error=%s",
                            len(recipients), subject, type(exc).__name__)

        uow.after_commit(send)
        return True

    def audit(
        self,
        uow: UnitOfWork,
        caller: Caller,
        action: str,
        target: str,
        *,
        tenant_id: str | None,
        outcome: str = "success",
        subject: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        **details: Any,
    ) -> None:
        """Append an audit entry in this transaction (hash-chained per tenant, see
        core/audit_chain.py); a successful change of a tenant's objects is also written to the
        webhook outbox (same transaction) as the event named ``action`` when that is an event
        type. ``subject`` is the object as the API shows it (default: its id and ``details``);
        never a secret. ``before`` is the object as it was: the entry records the fields that
        changed, before and after (a new object: after only)."""
        # details are data, never secrets; json round-trip keeps them storable
        safe = json.loads(json.dumps(details, default=str))
        uow.audit.add(
            AuditEvent(
                id=ids.new_id("evt"),
                at=self.clock.now(),
                tenant_id=tenant_id,
                actor=caller.actor,
                action=action,
                target=target,
                outcome=outcome,
                ip=caller.ip,
                request_id=caller.request_id,
                details=safe,
                credential=caller.credential,
                user_agent=caller.user_agent[:200] if caller.user_agent else None,
                changes=changes_between(before, subject),
            )
        )
        if self.events is not None and outcome == "success" and tenant_id is not None:
            self.events.emit(uow, action, tenant_id, subject or {"id": target, **safe},
                             caller.actor)


#: fields never copied into an entry's before/after, whatever an object holds
SECRET_FIELDS = frozenset({"secret", "secret_hash", "password", "password_hash", "digest",
                           "ciphertext", "token", "client_secret", "signing_secret"})


def _storable(obj: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in obj.items() if k not in SECRET_FIELDS}
    out: dict[str, Any] = json.loads(json.dumps(clean, default=str))
    return out


def changes_between(before: dict[str, Any] | None,
                    after: dict[str, Any] | None) -> dict[str, Any] | None:
    """What an audit entry records as changed: the differing fields, before and after (a new
    object: ``after`` only; nothing when neither is known). Secret fields never appear."""
    if before is None and after is None:
        return None
    if before is None:
        return {"after": _storable(after or {})}
    old, new = _storable(before), _storable(after or {})
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return {"before": {k: old.get(k) for k in keys}, "after": {k: new.get(k) for k in keys}}
