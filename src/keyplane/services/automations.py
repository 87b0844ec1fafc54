"""Automations (the seed's Infusionsoft action sets): a tenant's rules "when ``contact.created``
happens through the API (optionally only through this key, this API user or this connected
app), send it to these webhooks", and the product events that fire them.

The product reports what its API did with ``POST /v1/events`` and a verifier credential
(``keys:verify``), naming the key or OAuth access token the call was made with; Keyplane
resolves it to its tenant, key, API user and app, so the product sends no ids. A revoked,
locked, expired or unknown key is refused (``key``, 422). Each matching rule's webhooks get one
signed delivery of one event (one ``webhook-id``), through the same outbox and worker as
Keyplane's own events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from keyplane.core import ids
from keyplane.core.apps import ConnectedRepos
from keyplane.core.decisions import Code
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.events import (
    MAX_DATA_BYTES,
    MAX_RULE_WEBHOOKS,
    Automation,
    Source,
    product_event_type,
    rule_event,
)
from keyplane.core.model import Page
from keyplane.core.ports import UnitOfWork, WebhookRepos
from keyplane.core.rights import Caller
from keyplane.services import validate as v
from keyplane.services.context import Context
from keyplane.services.verify import Verdict
from keyplane.services.webhooks import Outbox

FIELDS = ("name", "description", "event", "key_id", "principal_id", "app_id", "webhook_ids",
          "enabled")
EVENT_FIELDS = ("type", "key", "data")
ID_PATTERN = r"[A-Za-z0-9_]{1,40}"
_ID_RE = re.compile(ID_PATTERN)
# a credential that is no longer live: the call it reports cannot have been made with it
_DEAD = {Code.REVOKED: "the key is revoked", Code.EXPIRED: "the key has expired",
         Code.DISABLED: "the key is locked or disabled"}


class AutomationRepo(Protocol):
    def add_automation(self, a: Automation) -> None: ...
    def automation(self, tenant_id: str, automation_id: str, *,
                   for_update: bool = False) -> Automation | None: ...
    def update_automation(self, a: Automation) -> None: ...
    def delete_automation(self, tenant_id: str, automation_id: str) -> None: ...
    def automations(self, tenant_id: str, *, limit: int,
                    cursor: str | None) -> Page[Automation]: ...
    def enabled_automations(self, tenant_id: str) -> list[Automation]: ...


@dataclass(frozen=True)
class Reported:
    """What ``POST /v1/events`` did: the event (``None`` when no rule matched)."""

    id: str | None
    type: str
    source: Source
    automation_ids: list[str]
    webhook_ids: list[str]


class AutomationService:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], AutomationRepo],
                 webhooks: WebhookRepos, outbox: Outbox,
                 identify: Callable[[Caller, str], Verdict],
                 apps: Callable[[UnitOfWork], ConnectedRepos]) -> None:
        self.ctx = ctx
        self.repos = repos
        self.webhooks = webhooks
        self.apps = apps  # a rule's app_id must name an app the tenant knows
        self.outbox = outbox
        # VerifyService.identify: whose key, is it live, may the caller know it (another
        # tenant's key is unknown), and the guess throttle (429 for an address over it)
        self.identify = identify

    # -- rules -------------------------------------------------------------------------------

    def _tenant(self, caller: Caller, tenant_id: str | None, *, write: bool) -> str:
        tid = caller.tenant_for(tenant_id)
        caller.require("tenant:write" if write else "tenant:read")
        return tid

    def _load(self, uow: UnitOfWork, tid: str, automation_id: str, *,
              for_update: bool = False) -> Automation:
        a = self.repos(uow).automation(tid, automation_id, for_update=for_update)
        if a is None:
            raise NotFound("no such automation")
        return a

    @staticmethod
    def _id(value: Any, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            raise ValidationError(f"{field}: an id (letters, digits and _)", field=field)
        return value

    def _apply(self, uow: UnitOfWork, tid: str, a: Automation, body: dict[str, Any]) -> None:
        """Validates and sets the fields in ``body``; ids must name the tenant's own objects
        (another tenant's do not exist: 404), and ``app_id`` an app the tenant registered or
        has connected (now or before)."""
        if "name" in body:
            a.name = v.text(body["name"], "name", max_len=v.MAX_NAME)
        if "description" in body:
            a.description = v.text(body["description"], "description",
                                   max_len=v.MAX_DESCRIPTION, required=False)
        if "event" in body:
            a.event = rule_event(body["event"])
        if "enabled" in body:
            a.enabled = v.boolean(body["enabled"], "enabled")
        if "key_id" in body:
            a.key_id = self._id(body["key_id"], "key_id")
            if a.key_id is not None and uow.keys.get(tid, a.key_id) is None:
                raise NotFound(f"key_id: no such key {a.key_id}", field="key_id")
        if "principal_id" in body:
            a.principal_id = self._id(body["principal_id"], "principal_id")
            if a.principal_id is not None and uow.principals.get(tid, a.principal_id) is None:
                raise NotFound(f"principal_id: no such member or service account "
                               f"{a.principal_id}", field="principal_id")
        if "app_id" in body:
            a.app_id = self._id(body["app_id"], "app_id")
            if a.app_id is not None and not self._knows_app(uow, tid, a.app_id):
                raise NotFound(f"app_id: no app {a.app_id} is connected to this account",
                               field="app_id")
        if "webhook_ids" in body:
            value = body["webhook_ids"]
            if not isinstance(value, list) or not value or len(value) > MAX_RULE_WEBHOOKS:
                raise ValidationError(f"webhook_ids: a list of 1 to {MAX_RULE_WEBHOOKS} webhook "
                                      "ids", field="webhook_ids")
            out: list[str] = []
            for item in value:
                wid = self._id(item, "webhook_ids")
                assert wid is not None
                if self.webhooks(uow).get(tid, wid) is None:
                    raise NotFound(f"webhook_ids: no such webhook {wid}", field="webhook_ids")
                if wid not in out:
                    out.append(wid)
            a.webhook_ids = out

    def _knows_app(self, uow: UnitOfWork, tid: str, app_id: str) -> bool:
        """An app the tenant may name: one it registered, or one connected to it now or
        before. Any other app, another tenant's pending one included, does not exist here
        (its id is not confirmed either)."""
        repos = self.apps(uow)
        app = repos.apps.get(app_id)
        return app is not None and (app.owner_tenant_id == tid
                                    or repos.connections.connected(tid, app_id))

    def create(self, caller: Caller, tenant_id: str | None, body: dict[str, Any]) -> Automation:
        tid = self._tenant(caller, tenant_id, write=True)
        v.only_fields(body, FIELDS)
        for required in ("name", "event", "webhook_ids"):
            if body.get(required) is None:
                raise ValidationError(f"{required}: required", field=required)
        now = self.ctx.clock.now()
        a = Automation(id=ids.new_id("aut"), tenant_id=tid, name="", event="", webhook_ids=[],
                       created_at=now, updated_at=now, created_by=caller.actor)
        with self.ctx.uow() as uow:
            if uow.tenants.get(tid) is None:
                raise NotFound("no such tenant")
            self._apply(uow, tid, a, body)
            self.repos(uow).add_automation(a)
            self.ctx.audit(uow, caller, "automation.created", a.id, tenant_id=tid,
                           event=a.event, webhook_ids=a.webhook_ids)
            uow.commit()
        return a

    def get(self, caller: Caller, tenant_id: str | None, automation_id: str) -> Automation:
        tid = self._tenant(caller, tenant_id, write=False)
        with self.ctx.uow(readonly=True) as uow:
            return self._load(uow, tid, automation_id)

    def list(self, caller: Caller, tenant_id: str | None, *, limit: int,
             cursor: str | None) -> Page[Automation]:
        tid = self._tenant(caller, tenant_id, write=False)
        with self.ctx.uow(readonly=True) as uow:
            return self.repos(uow).automations(tid, limit=limit, cursor=cursor)

    def update(self, caller: Caller, tenant_id: str | None, automation_id: str,
               body: dict[str, Any]) -> Automation:
        tid = self._tenant(caller, tenant_id, write=True)
        v.only_fields(body, FIELDS)
        for required in ("name", "event", "webhook_ids", "enabled"):
            if required in body and body[required] is None:
                raise ValidationError(f"{required}: may not be null", field=required)
        with self.ctx.uow() as uow:
            a = self._load(uow, tid, automation_id, for_update=True)
            self._apply(uow, tid, a, body)
            a.updated_at = self.ctx.clock.now()
            self.repos(uow).update_automation(a)
            self.ctx.audit(uow, caller, "automation.updated", a.id, tenant_id=tid,
                           fields=sorted(body))
            uow.commit()
        return a

    def delete(self, caller: Caller, tenant_id: str | None, automation_id: str) -> None:
        tid = self._tenant(caller, tenant_id, write=True)
        with self.ctx.uow() as uow:
            a = self._load(uow, tid, automation_id, for_update=True)
            self.repos(uow).delete_automation(tid, a.id)
            self.ctx.audit(uow, caller, "automation.deleted", a.id, tenant_id=tid,
                           event=a.event)
            uow.commit()

    # -- product events ----------------------------------------------------------------------

    def source(self, caller: Caller, raw: Any) -> Source:
        """The tenant, key, API user and app behind a key or access token the product's API
        was called with. A tenant's verifier knows only its own tenant's keys."""
        if not isinstance(raw, str) or not raw:
            raise ValidationError("key: the key or access token the API call was made with",
                                  field="key")
        verdict = self.identify(caller, raw)
        snap = verdict.snapshot
        code = verdict.decision.code
        if snap is None or code in (Code.MALFORMED, Code.NOT_FOUND):
            raise NotFound("key: no such key or access token", field="key",
                           code="key_not_found")
        if code in _DEAD:
            raise Conflict(f"key: {_DEAD[code]}; events are accepted for live keys only",
                           field="key", code=f"key_{code.value.lower()}")
        if snap.tenant_id is None:
            raise Conflict("key: an operator key belongs to no tenant", field="key",
                           code="operator_key")
        app_id = snap.meta.get("app_id")
        return Source(tenant_id=snap.tenant_id, key_id=snap.key_id,
                      principal_id=snap.owner_id,
                      app_id=app_id if isinstance(app_id, str) else None)

    def report(self, caller: Caller, body: dict[str, Any]) -> Reported:
        """Fires the tenant's matching automations for an event the product's API caused."""
        caller.require("keys:verify")
        v.only_fields(body, EVENT_FIELDS)
        event_type = product_event_type(body.get("type"))
        data = body.get("data", {})
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValidationError("data: a JSON object", field="data")
        try:
            size = len(json.dumps(data, allow_nan=False).encode())
        except (TypeError, ValueError):
            raise ValidationError("data: JSON values only (no NaN or Infinity)",
                                  field="data") from None
        if size > MAX_DATA_BYTES:
            raise ValidationError(f"data: at most {MAX_DATA_BYTES} bytes as JSON",
                                  field="data")
        source = self.source(caller, body.get("key"))
        with self.ctx.uow() as uow:
            rules = [a for a in self.repos(uow).enabled_automations(source.tenant_id)
                     if a.matches(event_type, source)]
            targets = list(dict.fromkeys(w for a in rules for w in a.webhook_ids))
            event_id: str | None = None
            sent_to: list[str] = []
            if targets:
                actor = ("key:" if source.key_id.startswith("key_") else "token:") + \
                    source.key_id
                event_id, sent_to = self.outbox.emit_to(uow, event_type, source.tenant_id, {
                    "tenant_id": source.tenant_id, "object": data, "actor": actor,
                    "via": {"key_id": source.key_id, "principal_id": source.principal_id,
                            "app_id": source.app_id},
                    "automation_ids": [a.id for a in rules]}, targets)
            uow.commit()
        return Reported(event_id, event_type, source, [a.id for a in rules], sent_to)
