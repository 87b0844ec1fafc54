"""/v1/webhooks: signed webhook endpoints, their signing secrets and their deliveries.

A tenant credential manages its own (``tenant:write``; reading needs ``tenant:read``); the
operator names the tenant with ``?tenant_id=``. Another tenant's webhooks do not exist (404).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field

from keyplane.core.views import delivery_view, webhook_view
from keyplane.core.webhooks import EVENT_PATTERNS, MAX_PATTERNS, MAX_URL_LENGTH
from keyplane.services.webhooks import IssuedWebhook
from keyplane.web.deps import CallerDep, Cursor, KeyplaneDep, Limit, TenantParam, page_out
from keyplane.web.schemas import Absent, Body, Text

router = APIRouter(tags=["webhooks"])

EVENTS = ("Event types (key.created, key.*, *, …); see the catalogue in the README")


WebhookUrl = Annotated[str, Field(max_length=MAX_URL_LENGTH, json_schema_extra={
    "x-keyplane-webhook-url": True,  # its pattern: https only unless private targets are allowed
    "description": "Where to send events: https (plain http only where "
                   "KEYPLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS is set), no credentials, no #fragment; "
                   "a host that resolves to a private, loopback or link-local address is refused"})]
EventPattern = Annotated[str, Field(json_schema_extra={"enum": list(EVENT_PATTERNS)})]
Events = Annotated[list[EventPattern], Field(max_length=MAX_PATTERNS, json_schema_extra={
    "minItems": 1}, description=EVENTS)]


class WebhookCreate(Body):
    url: WebhookUrl
    description: Text | None = None
    events: Events
    enabled: bool = True


class WebhookPatch(Body):
    url: WebhookUrl | Absent = None
    description: Text | None = None
    events: Events | Absent = None
    enabled: bool | Absent = None


class SecretRotate(Body):
    grace_period_seconds: int = Field(
        default=86400, ge=0, le=7 * 86400,
        description="How long the old secret keeps signing beside the new one (0: not at all)")


def _issued(issued: IssuedWebhook) -> dict[str, Any]:
    return {**webhook_view(issued.webhook), "secret": issued.secret}


@router.post("/v1/webhooks", status_code=201,
             summary="Create a webhook (its signing secret is shown once)")
def create(body: WebhookCreate, caller: CallerDep, kp: KeyplaneDep,
           tenant_id: TenantParam = None) -> dict[str, Any]:
    return _issued(kp.webhooks.create(caller, tenant_id, body.fields()))


@router.get("/v1/webhooks", summary="List webhooks (newest first)")
def list_webhooks(caller: CallerDep, kp: KeyplaneDep, tenant_id: TenantParam = None,
                  limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    page = kp.webhooks.list(caller, tenant_id, limit=limit, cursor=cursor)
    return page_out(page, webhook_view)


@router.get("/v1/webhooks/{webhook_id}", summary="Show a webhook")
def show(webhook_id: str, caller: CallerDep, kp: KeyplaneDep,
         tenant_id: TenantParam = None) -> dict[str, Any]:
    return webhook_view(kp.webhooks.get(caller, tenant_id, webhook_id))


@router.patch("/v1/webhooks/{webhook_id}",
              summary="Edit a webhook; enabled: true turns a disabled one back on")
def edit(webhook_id: str, body: WebhookPatch, caller: CallerDep, kp: KeyplaneDep,
         tenant_id: TenantParam = None) -> dict[str, Any]:
    return webhook_view(kp.webhooks.update(caller, tenant_id, webhook_id, body.fields()))


@router.delete("/v1/webhooks/{webhook_id}", status_code=204,
               summary="Delete a webhook and its pending deliveries")
def delete(webhook_id: str, caller: CallerDep, kp: KeyplaneDep,
           tenant_id: TenantParam = None) -> Response:
    kp.webhooks.delete(caller, tenant_id, webhook_id)
    return Response(status_code=204)


@router.post("/v1/webhooks/{webhook_id}/rotate-secret",
             summary="A new signing secret (shown once); the old one keeps signing for a grace")
def rotate_secret(webhook_id: str, caller: CallerDep, kp: KeyplaneDep,
                  body: SecretRotate | None = None,
                  tenant_id: TenantParam = None) -> dict[str, Any]:
    fields = body.fields() if body else {}
    return _issued(kp.webhooks.rotate_secret(caller, tenant_id, webhook_id, fields))


@router.get("/v1/webhooks/{webhook_id}/deliveries",
            summary="Deliveries, newest first: status, response code, latency, attempts")
def deliveries(webhook_id: str, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None,
               status: Literal["pending", "succeeded", "failed"] | None = Query(default=None),
               limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    page = kp.webhooks.deliveries(caller, tenant_id, webhook_id, status=status, limit=limit,
                                  cursor=cursor)
    return page_out(page, delivery_view)


@router.post("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
             status_code=202, summary="Send a delivery again (same event and webhook-id)")
def redeliver(webhook_id: str, delivery_id: str, caller: CallerDep, kp: KeyplaneDep,
              tenant_id: TenantParam = None) -> dict[str, Any]:
    return delivery_view(kp.webhooks.redeliver(caller, tenant_id, webhook_id, delivery_id))
