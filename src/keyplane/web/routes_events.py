"""Automations: ``POST /v1/events`` (the product reports what its API did, with a verifier
credential) and ``/v1/automations`` (a tenant's rules that send those events to its webhooks).

Rules are managed like webhooks (``tenant:write``; reading needs ``tenant:read``; the operator
names the tenant with ``?tenant_id=``). Another tenant's rules, keys and webhooks do not exist
(404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from keyplane.core.events import (
    EVENT_TYPE_PATTERN,
    MAX_RULE_WEBHOOKS,
    RULE_EVENT_PATTERN,
    Automation,
)
from keyplane.core.views import ts
from keyplane.services.automations import ID_PATTERN, Reported
from keyplane.web.credentials import key_in
from keyplane.web.deps import (
    CallerDep,
    Cursor,
    KeyplaneDep,
    Limit,
    TenantParam,
    page_out,
)
from keyplane.web.schemas import Absent, Body, Name, Text

router = APIRouter(tags=["automations"])

Id = Annotated[str, Field(max_length=40, pattern=f"^{ID_PATTERN}$")]
# patterns with a look-ahead: stated in the schema, checked by the service (naming the field)
RuleEvent = Annotated[str, Field(max_length=81, json_schema_extra={
    "pattern": RULE_EVENT_PATTERN,
    "description": "contact.created, contact.* (every verb of an area) or *.created (that "
                   "verb on any record); Keyplane's own areas (key, member, …) are for "
                   "webhooks"})]
WebhookIds = Annotated[list[Id], Field(min_length=1, max_length=MAX_RULE_WEBHOOKS,
                                       description="The tenant's webhooks to send it to")]


class EventReport(Body):
    type: str = Field(max_length=81, json_schema_extra={
        "pattern": EVENT_TYPE_PATTERN,
        "description": "What the product's API did: area.verb (contact.created); not one of "
                       "Keyplane's own areas (key, member, …)"})
    key: str = Field(min_length=1, max_length=400, description=(
        "The key or OAuth access token the product's API call was made with (`<name>:<key>` "
        "and `Bearer …` too): Keyplane resolves its tenant, key, API user and app"))
    data: dict[str, Any] | Absent = Field(default=None, description=(
        "The record, as the product wants the receivers to see it (at most 64 KiB)"))


class AutomationCreate(Body):
    name: Name
    description: Text | None = None
    event: RuleEvent
    webhook_ids: WebhookIds
    key_id: Id | None = Field(default=None, description="Only calls made with this key")
    principal_id: Id | None = Field(default=None, description="Only calls by this API user "
                                    "(the member or service account that owns the key)")
    app_id: Id | None = Field(default=None, description="Only calls by this connected app")
    enabled: bool = True


class AutomationPatch(Body):
    name: Name | Absent = None
    description: Text | None = None
    event: RuleEvent | Absent = None
    webhook_ids: WebhookIds | Absent = None
    key_id: Id | None = None
    principal_id: Id | None = None
    app_id: Id | None = None
    enabled: bool | Absent = None


def automation_view(a: Automation) -> dict[str, Any]:
    return {"id": a.id, "tenant_id": a.tenant_id, "name": a.name,
            "description": a.description, "event": a.event, "key_id": a.key_id,
            "principal_id": a.principal_id, "app_id": a.app_id,
            "webhook_ids": list(a.webhook_ids), "enabled": a.enabled,
            "created_by": a.created_by, "created_at": ts(a.created_at),
            "updated_at": ts(a.updated_at)}


def reported_view(r: Reported) -> dict[str, Any]:
    return {"id": r.id, "type": r.type, "tenant_id": r.source.tenant_id,
            "key_id": r.source.key_id, "principal_id": r.source.principal_id,
            "app_id": r.source.app_id, "automation_ids": r.automation_ids,
            "webhook_ids": r.webhook_ids}


@router.post("/v1/events", status_code=202,
             summary="Report what the product's API did (fires the tenant's automations)")
async def report_event(body: EventReport, caller: CallerDep, kp: KeyplaneDep) -> dict[str, Any]:
    # the key is looked up by VerifyService.identify: an unknown key is a guess, slowed per
    # address like a guess at /v1/verify
    fields = body.fields()
    fields["key"] = key_in(body.key)  # "<name>:<key>" and "Bearer …" too, as /v1/verify
    done = await run_in_threadpool(kp.automations.report, caller, fields)
    return reported_view(done)


@router.post("/v1/automations", status_code=201, summary="Create an automation rule")
def create(body: AutomationCreate, caller: CallerDep, kp: KeyplaneDep,
           tenant_id: TenantParam = None) -> dict[str, Any]:
    return automation_view(kp.automations.create(caller, tenant_id, body.fields()))


@router.get("/v1/automations", summary="List automation rules (newest first)")
def list_automations(caller: CallerDep, kp: KeyplaneDep, tenant_id: TenantParam = None,
                     limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    page = kp.automations.list(caller, tenant_id, limit=limit, cursor=cursor)
    return page_out(page, automation_view)


@router.get("/v1/automations/{automation_id}", summary="Show an automation rule")
def show(automation_id: str, caller: CallerDep, kp: KeyplaneDep,
         tenant_id: TenantParam = None) -> dict[str, Any]:
    return automation_view(kp.automations.get(caller, tenant_id, automation_id))


@router.patch("/v1/automations/{automation_id}", summary="Edit an automation rule")
def edit(automation_id: str, body: AutomationPatch, caller: CallerDep, kp: KeyplaneDep,
         tenant_id: TenantParam = None) -> dict[str, Any]:
    return automation_view(kp.automations.update(caller, tenant_id, automation_id,
                                                 body.fields()))


@router.delete("/v1/automations/{automation_id}", status_code=204,
               summary="Delete an automation rule")
def delete(automation_id: str, caller: CallerDep, kp: KeyplaneDep,
           tenant_id: TenantParam = None) -> Response:
    kp.automations.delete(caller, tenant_id, automation_id)
    return Response(status_code=204)
