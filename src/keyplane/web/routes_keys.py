"""/v1/keys and /v1/operator/keys: the key lifecycle.

Every answer about one key carries its ``ETag``; ``PATCH`` and ``rotate`` honour ``If-Match``
with it (412 when the key changed since it was read)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from keyplane.core.model import ApiKey
from keyplane.core.views import key_out
from keyplane.web.deps import CallerDep, Cursor, KeyplaneDep, Limit, TenantParam, page_out
from keyplane.web.schemas import (
    KeyCreate,
    KeyDuplicate,
    KeyPatch,
    KeyRotate,
    OperatorKeyCreate,
)

router = APIRouter(tags=["keys"])

IfMatch = Annotated[
    str | None,
    Header(max_length=1000, description="The key's ETag as last read: the change is refused "
           "with 412 if the key has changed since (another rotation or edit came first)"),
]


def if_match_tags(header: str | None) -> list[str] | None:
    """The entity tags of an ``If-Match`` header (``*`` stays ``*``); weak tags never match."""
    if header is None:
        return None
    tags = []
    for part in header.split(","):
        tag = part.strip()
        if tag == "*":
            tags.append(tag)
        elif len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tags.append(tag[1:-1])
    return tags


def tagged(response: Response, key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    response.headers["ETag"] = f'"{key.version}"'
    return key_out(key, secret)


def _routes(prefix: str, operator: bool) -> None:
    def tid(value: str | None) -> str | None:
        return None if operator else value

    def create(body: KeyCreate, caller: CallerDep, kp: KeyplaneDep, response: Response,
               tenant_id: TenantParam = None) -> dict[str, Any]:
        issued = kp.keys.create(caller, tid(tenant_id), body.fields(), operator=operator)
        return tagged(response, issued.key, issued.secret)

    # an operator key has no owner: its body has no owner_id (so the schema says so too)
    create.__annotations__["body"] = OperatorKeyCreate if operator else KeyCreate
    router.post(prefix, status_code=201, summary="Create a key (the secret is shown once)")(
        create)

    @router.get(prefix, summary="List keys (newest first)")
    def list_keys(caller: CallerDep, kp: KeyplaneDep, tenant_id: TenantParam = None,
                  owner_id: str | None = Query(default=None, max_length=40),
                  enabled: bool | None = None,
                  q: str | None = Query(default=None, max_length=200),
                  limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
        page = kp.keys.list(caller, tid(tenant_id), owner_id=owner_id, enabled=enabled, q=q,
                            limit=limit, cursor=cursor, operator=operator)
        return page_out(page, key_out)

    @router.get(prefix + "/{key_id}", summary="Show a key (with its ETag)")
    def show(key_id: str, caller: CallerDep, kp: KeyplaneDep, response: Response,
             tenant_id: TenantParam = None) -> dict[str, Any]:
        key = kp.keys.get(caller, tid(tenant_id), key_id, operator=operator)
        return tagged(response, key)

    @router.patch(prefix + "/{key_id}",
                  summary="Edit, lock or unlock a key (anything but locking needs every scope "
                  "the key grants)")
    def edit(key_id: str, body: KeyPatch, caller: CallerDep, kp: KeyplaneDep,
             response: Response, tenant_id: TenantParam = None,
             if_match: IfMatch = None) -> dict[str, Any]:
        key = kp.keys.update(caller, tid(tenant_id), key_id, body.fields(), operator=operator,
                             if_match=if_match_tags(if_match))
        return tagged(response, key)

    @router.delete(prefix + "/{key_id}", status_code=204,
                   summary="Revoke a key (immediate and irreversible)")
    def revoke(key_id: str, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None) -> Response:
        kp.keys.revoke(caller, tid(tenant_id), key_id, operator=operator)
        return Response(status_code=204)

    @router.post(prefix + "/{key_id}/rotate",
                 summary="Rotate: a new secret; the old one works until the grace ends")
    def rotate(key_id: str, caller: CallerDep, kp: KeyplaneDep, response: Response,
               body: KeyRotate | None = None, tenant_id: TenantParam = None,
               if_match: IfMatch = None) -> dict[str, Any]:
        fields = body.fields() if body else {}
        issued = kp.keys.rotate(caller, tid(tenant_id), key_id, fields, operator=operator,
                                if_match=if_match_tags(if_match))
        return tagged(response, issued.key, issued.secret)

    @router.post(prefix + "/{key_id}/duplicate", status_code=201,
                 summary="Duplicate as a new key: same settings, new name, new secret")
    def duplicate(key_id: str, caller: CallerDep, kp: KeyplaneDep, response: Response,
                  body: KeyDuplicate | None = None,
                  tenant_id: TenantParam = None) -> dict[str, Any]:
        fields = body.fields() if body else {}
        issued = kp.keys.duplicate(caller, tid(tenant_id), key_id, fields, operator=operator)
        return tagged(response, issued.key, issued.secret)


_routes("/v1/keys", operator=False)
_routes("/v1/operator/keys", operator=True)
