"""/v1/apps (partner apps and the operator's decision) and /v1/connections (connected apps)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from keyplane.bootstrap import Keyplane
from keyplane.core.apps import MAX_REDIRECT_URIS, MAX_URI_LENGTH
from keyplane.core.views import app_out, connection_out, ts
from keyplane.services import validate as v
from keyplane.web.deps import CallerDep, Cursor, Limit, TenantParam, page_out
from keyplane.web.schemas import Body, DataScope, Name, Text

router = APIRouter()


# what core.apps.web_uri accepts, as a pattern: https (http only on a loopback address), no
# userinfo, fragment, spaces, quotes or control characters
URI_PATTERN = (r"^(https://[!$%&'()*+,\-.0-9;=A-Z_a-z~]+|http://(127\.0\.0\.1|localhost|\[::1\]))"
               r'(:[0-9]{1,4})?([/?][^\u0000-\u0020\u007F"<>\\^`{|}#]*)?$')
WebUri = Annotated[str, Field(max_length=MAX_URI_LENGTH, json_schema_extra={
    "pattern": URI_PATTERN})]


class AppCreate(Body):
    name: Name
    description: Text | None = None
    homepage: WebUri
    # minItems: stated for the schema; the service refuses an empty list in its own words
    redirect_uris: list[WebUri] = Field(
        max_length=MAX_REDIRECT_URIS, json_schema_extra={"minItems": 1}, description=(
            "Exact redirect URIs: https, or http on a loopback address. Compared byte for byte."))
    scopes: list[DataScope] = Field(max_length=v.MAX_SCOPES, json_schema_extra={"minItems": 1},
                                    description="Data scopes from the catalogue")


class Decision(Body):
    reason: Text | None = None


class SecretRotate(Body):
    grace_period_seconds: int = Field(default=604800, ge=0, le=v.MAX_GRACE_SECONDS)


def _env(request: Request) -> Keyplane:
    kp: Keyplane = request.app.state.keyplane
    return kp


# -- partner apps ---------------------------------------------------------------------------

@router.post("/v1/apps", status_code=201, tags=["apps"],
             summary="Register a partner app (pending until the operator approves it)")
def register_app(body: AppCreate, caller: CallerDep, request: Request,
                 tenant_id: TenantParam = None) -> dict[str, Any]:
    return app_out(_env(request).apps.register(caller, tenant_id, body.fields()))


@router.get("/v1/apps", tags=["apps"],
            summary="List partner apps (the operator sees all; a tenant its own)")
def list_apps(caller: CallerDep, request: Request, tenant_id: TenantParam = None,
              status: Literal["pending", "approved", "rejected", "suspended"] | None = None,
              limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    page = _env(request).apps.list(caller, tenant_id, status=status, limit=limit,
                                   cursor=cursor)
    return page_out(page, app_out)


@router.get("/v1/apps/{app_id}", tags=["apps"], summary="Show a partner app")
def show_app(app_id: str, caller: CallerDep, request: Request,
             tenant_id: TenantParam = None) -> dict[str, Any]:
    return app_out(_env(request).apps.get(caller, tenant_id, app_id))


def _decision_route(action: str, summary: str) -> None:
    @router.post(f"/v1/apps/{{app_id}}/{action}", tags=["apps"], summary=summary,
                 name=f"{action}_app")
    def decide(app_id: str, caller: CallerDep, request: Request,
               body: Decision | None = None) -> dict[str, Any]:
        reason = body.reason if body else None
        app, secret = _env(request).apps.decide(caller, app_id, action, reason)
        return app_out(app, secret)


_decision_route("approve", "Approve an app (operator): issues client_id and a client secret, "
                           "shown once")
_decision_route("reject", "Reject a pending app (operator)")
_decision_route("suspend", "Suspend an approved app (operator): its flows and tokens stop")


@router.post("/v1/apps/{app_id}/rotate-secret", tags=["apps"],
             summary="Rotate the client secret; the old one works until the grace ends")
def rotate_secret(app_id: str, caller: CallerDep, request: Request,
                  body: SecretRotate | None = None,
                  tenant_id: TenantParam = None) -> dict[str, Any]:
    issued = _env(request).apps.rotate_secret(caller, tenant_id, app_id,
                                              body.fields() if body else {})
    out = app_out(issued.app, issued.secret)
    out["previous_secret_expires_at"] = ts(issued.secret_expires_previous_at)
    return out


# -- connections --------------------------------------------------------------------------

@router.get("/v1/connections", tags=["connections"],
            summary="Connected apps of a tenant: who authorised each, when, scopes, usage")
def list_connections(caller: CallerDep, request: Request, tenant_id: TenantParam = None,
                     limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    page = _env(request).connections.list(caller, tenant_id, limit=limit, cursor=cursor)
    return page_out(page, connection_out)


@router.get("/v1/connections/{connection_id}", tags=["connections"],
            summary="Show a connection")
def show_connection(connection_id: str, caller: CallerDep, request: Request,
                    tenant_id: TenantParam = None) -> dict[str, Any]:
    return connection_out(_env(request).connections.get(caller, tenant_id, connection_id))


@router.delete("/v1/connections/{connection_id}", tags=["connections"],
               summary="Revoke a connection: every token of it stops working at once")
def revoke_connection(connection_id: str, caller: CallerDep, request: Request,
                      tenant_id: TenantParam = None) -> dict[str, Any]:
    view, count = _env(request).connections.revoke(caller, tenant_id, connection_id)
    out = connection_out(view)
    last = ts(view.connection.last_used_at)
    out["tokens_revoked"] = count
    out["stops_working"] = (
        f"{view.app.name} can no longer call the API for this tenant: its access and refresh "
        f"tokens ({count}) are revoked now. It was last used "
        + (f"at {last}." if last else "never.")
        + " Anything that relies on it (automations, syncs) stops until an admin connects "
          "it again.")
    return out
