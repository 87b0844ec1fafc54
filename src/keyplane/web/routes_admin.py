"""/v1 tenants, members, service accounts, groups, the scope catalogue and the audit log."""


import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

from fastapi import APIRouter, Path, Query, Response
from pydantic import BeforeValidator

from keyplane.bootstrap import Keyplane
from keyplane.core import scopes as sc
from keyplane.core.errors import NotFound
from keyplane.core.model import Principal, PrincipalKind
from keyplane.core.views import audit_out, group_out, principal_out, tenant_out
from keyplane.services.audit import CURSOR_PATTERN, AuditFilter
from keyplane.web.deps import CallerDep, Cursor, KeyplaneDep, Limit, TenantParam, page_out
from keyplane.web.schemas import (
    Body,
    GroupCreate,
    GroupPatch,
    MemberCreate,
    MemberPatch,
    ScopePut,
    ServiceAccountCreate,
    ServiceAccountPatch,
    TenantCreate,
    TenantPatch,
)

router = APIRouter()


# -- tenants ------------------------------------------------------------------------------

@router.post("/v1/tenants", status_code=201, tags=["tenants"],
             summary="Create a tenant (operator)")
def create_tenant(body: TenantCreate, caller: CallerDep, kp: KeyplaneDep) -> dict[str, Any]:
    return tenant_out(kp.tenants.create(caller, body.fields()))


@router.get("/v1/tenants", tags=["tenants"], summary="List tenants (operator)")
def list_tenants(caller: CallerDep, kp: KeyplaneDep, limit: Limit = 50,
                 cursor: Cursor = None) -> dict[str, Any]:
    return page_out(kp.tenants.list(caller, limit=limit, cursor=cursor), tenant_out)


@router.get("/v1/tenants/{tenant_id}", tags=["tenants"], summary="Show a tenant and its policy")
def show_tenant(tenant_id: str, caller: CallerDep, kp: KeyplaneDep) -> dict[str, Any]:
    return tenant_out(kp.tenants.get(caller, tenant_id))


@router.patch("/v1/tenants/{tenant_id}", tags=["tenants"], summary="Change a tenant's policy")
def edit_tenant(tenant_id: str, body: TenantPatch, caller: CallerDep,
                kp: KeyplaneDep) -> dict[str, Any]:
    return tenant_out(kp.tenants.update(caller, tenant_id, body.fields()))


# -- members and service accounts ---------------------------------------------------------

def _with_note(kp: Keyplane, principal: Principal) -> dict[str, Any]:
    """The principal, with a ``note`` when it is an API user that holds no data scopes."""
    out = principal_out(principal)
    note = kp.principals.no_data_note(principal)
    if note is not None:
        out["note"] = note
    return out


def _principal_routes(prefix: str, kind: PrincipalKind, create_model: type[Body],
                      patch_model: type[Body], tag: str) -> None:
    # FastAPI reads each body's model from the annotation at run time, so the annotation must be
    # the class passed in; mypy takes no variable as a type, and sees the common base instead.
    if TYPE_CHECKING:
        CreateBody: TypeAlias = Body
        PatchBody: TypeAlias = Body
    else:
        CreateBody = create_model
        PatchBody = patch_model

    @router.post(prefix, status_code=201, tags=[tag], summary=f"Create a {tag[:-1]}")
    def create(body: CreateBody, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None) -> dict[str, Any]:
        made = kp.principals.create(caller, tenant_id, kind, body.fields())
        return _with_note(kp, made)

    @router.get(prefix, tags=[tag], summary=f"List {tag}")
    def list_(caller: CallerDep, kp: KeyplaneDep, tenant_id: TenantParam = None,
              limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
        page = kp.principals.list(caller, tenant_id, kind=kind, limit=limit, cursor=cursor)
        return page_out(page, principal_out)

    @router.get(prefix + "/{principal_id}", tags=[tag], summary=f"Show a {tag[:-1]}")
    def show(principal_id: str, caller: CallerDep, kp: KeyplaneDep,
             tenant_id: TenantParam = None) -> dict[str, Any]:
        principal = kp.principals.get(caller, tenant_id, principal_id)
        if principal.kind is not kind:
            raise NotFound(f"no such {tag[:-1]}")
        return principal_out(principal)

    @router.patch(prefix + "/{principal_id}", tags=[tag],
                  summary=f"Change a {tag[:-1]} (role, groups, enabled)")
    def edit(principal_id: str, body: PatchBody, caller: CallerDep,
             kp: KeyplaneDep, tenant_id: TenantParam = None) -> dict[str, Any]:
        show(principal_id, caller, kp, tenant_id)
        return _with_note(kp, kp.principals.update(caller, tenant_id, principal_id,
                                                   body.fields()))

    @router.delete(prefix + "/{principal_id}", status_code=204, tags=[tag],
                   summary=f"Remove a {tag[:-1]} and revoke its keys")
    def delete(principal_id: str, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None) -> Response:
        show(principal_id, caller, kp, tenant_id)
        kp.principals.delete(caller, tenant_id, principal_id)
        return Response(status_code=204)


_principal_routes("/v1/members", PrincipalKind.MEMBER, MemberCreate, MemberPatch, "members")
_principal_routes("/v1/service-accounts", PrincipalKind.SERVICE_ACCOUNT, ServiceAccountCreate,
                  ServiceAccountPatch, "service-accounts")


# -- groups -------------------------------------------------------------------------------

@router.post("/v1/groups", status_code=201, tags=["groups"],
             summary="Create a data-access group")
def create_group(body: GroupCreate, caller: CallerDep, kp: KeyplaneDep,
                 tenant_id: TenantParam = None) -> dict[str, Any]:
    return group_out(kp.groups.create(caller, tenant_id, body.fields()))


@router.get("/v1/groups", tags=["groups"], summary="List groups")
def list_groups(caller: CallerDep, kp: KeyplaneDep,
                tenant_id: TenantParam = None) -> dict[str, Any]:
    return {"items": [group_out(g) for g in kp.groups.list(caller, tenant_id)],
            "next_cursor": None}


@router.get("/v1/groups/{group_id}", tags=["groups"], summary="Show a group")
def show_group(group_id: str, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None) -> dict[str, Any]:
    return group_out(kp.groups.get(caller, tenant_id, group_id))


@router.patch("/v1/groups/{group_id}", tags=["groups"], summary="Change a group")
def edit_group(group_id: str, body: GroupPatch, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None) -> dict[str, Any]:
    return group_out(kp.groups.update(caller, tenant_id, group_id, body.fields()))


@router.delete("/v1/groups/{group_id}", status_code=204, tags=["groups"],
               summary="Delete an empty group")
def delete_group(group_id: str, caller: CallerDep, kp: KeyplaneDep,
                 tenant_id: TenantParam = None) -> Response:
    kp.groups.delete(caller, tenant_id, group_id)
    return Response(status_code=204)


# -- scope catalogue ----------------------------------------------------------------------

@router.get("/v1/scopes", tags=["scopes"], summary="The scope catalogue")
def list_scopes(caller: CallerDep, kp: KeyplaneDep) -> dict[str, Any]:
    del caller  # any valid credential may read the catalogue
    return {"items": [{"name": n, "description": d} for n, d in kp.catalogue.list().items()],
            "next_cursor": None}


ScopeName = Path(max_length=64, description="area:action (lowercase)",
                 json_schema_extra={"pattern": sc.SCOPE_RE.pattern.replace(r"\A", "^")
                                    .replace(r"\Z", "$")})


@router.put("/v1/scopes/{name}", tags=["scopes"], summary="Add or describe a scope (operator)")
def put_scope(body: ScopePut, caller: CallerDep, kp: KeyplaneDep,
              name: str = ScopeName) -> dict[str, Any]:
    return kp.catalogue.put(caller, name, body.fields())


@router.delete("/v1/scopes/{name}", status_code=204, tags=["scopes"],
               summary="Remove a scope (operator); keys lose it at once")
def delete_scope(caller: CallerDep, kp: KeyplaneDep, name: str = ScopeName) -> Response:
    kp.catalogue.delete(caller, name)
    return Response(status_code=204)


# -- audit --------------------------------------------------------------------------------

AuditToken = Annotated[str | None, Query(max_length=80, pattern=r"^[A-Za-z0-9_:.@\-]+$")]
_ISO_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}")


def _iso_only(value: object) -> object:
    """A time in the query must be ISO 8601 (a date first), not a number of seconds."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


When = Annotated[datetime | None, BeforeValidator(_iso_only)]


@router.get("/v1/audit-events", tags=["audit"], summary="The audit log (newest first)")
def list_audit(
    caller: CallerDep, kp: KeyplaneDep, tenant_id: TenantParam = None,
    action: Annotated[str | None, Query(
        max_length=60, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+){0,2}$",
        description="Only this action, e.g. `key.revoked`")] = None,
    actor: Annotated[AuditToken, Query(
        description="Only entries by this actor, e.g. `key:key_…`, `principal:usr_…`, "
        "`app:app_…`, `cli:alice`")] = None,
    target: Annotated[AuditToken, Query(
        description="Only entries about this object id")] = None,
    since: Annotated[When, Query(
        description="Entries at or after this time (ISO 8601; UTC if no offset)")] = None,
    until: Annotated[When, Query(
        description="Entries before this time (ISO 8601); not after `since`: nothing")] = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(
        max_length=60, pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page, as given")] = None,
) -> dict[str, Any]:
    """Each entry names the actor and the credential it acted through, what changed (before
    and after, never secrets), the time, source IP and user agent, and its place in the
    tenant's hash chain (`seq`, `hash`). `next_cursor` is opaque and stays valid while new
    entries are appended. A bad filter answers 4xx naming the field."""
    page = kp.audit.list(caller, tenant_id, limit=limit, cursor=cursor,
                         where=AuditFilter(action=action, actor=actor, target=target,
                                           since=since, until=until))
    return page_out(page, audit_out)
