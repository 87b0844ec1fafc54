"""Request-level plumbing: the Keyplane container, the authenticated caller, paging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import ValidationError
from keyplane.core.model import Page
from keyplane.core.rights import Caller
from keyplane.services.verification import Peer
from keyplane.web import credentials, net

T = TypeVar("T")


async def kp(request: Request) -> Keyplane:
    container: Keyplane = request.app.state.keyplane
    return container


def bearer(request: Request) -> str | None:
    """The key the request presents: ``Authorization: Bearer [<name>:]<key>``, else
    ``X-API-Key``, else a configured legacy header (web/credentials.py)."""
    return credentials.from_headers(request.scope["headers"], request.app.state.legacy_headers)


# declare the credential in /openapi.json; ``caller`` reads and answers it itself
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="A Keyplane key: `Authorization: Bearer <key>` (or "
                    "`Bearer <name>:<key>`)")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                       description="A Keyplane key in `X-API-Key` (read when no `Authorization: "
                       "Bearer` is sent; then any header named in KEYPLANE_LEGACY_HEADERS)")


async def caller(request: Request, keyplane: Annotated[Keyplane, Depends(kp)],
                 _declared: Annotated[object, Depends(BEARER)] = None,
                 _api_key: Annotated[object, Depends(API_KEY)] = None) -> Caller:
    """The authenticated credential (services/verification.py decides); cache hits are
    answered on the event loop."""
    raw = bearer(request)
    peer = peer_of(request)
    service = keyplane.verification
    found = service.authenticate_if_cached(raw, peer)
    if found is None:
        found = await run_in_threadpool(service.authenticate, raw, peer)
    request.scope["keyplane.caller"] = found  # a refusal is audited as this caller's
    return found


def peer_of(request: Request) -> Peer:
    """Who calls and from where: one per request (the verify fast path may have made it),
    holding what the verification service already verified and counted for it."""
    peer = request.scope.get(PEER)
    if not isinstance(peer, Peer):
        peer = request.scope[PEER] = new_peer(request)
    return peer


def new_peer(request: Request) -> Peer:
    """A Peer that has verified nothing yet (``peer_of`` keeps one per request)."""
    trusted = request.app.state.trusted_proxies
    return Peer(net.client_address(request, trusted), net.is_tls(request, trusted),
                request.scope.get("keyplane.request_id"), request.headers.get("user-agent"))


PEER = "keyplane.peer"  # the request's Peer, in the ASGI scope


CallerDep = Annotated[Caller, Depends(caller)]
KeyplaneDep = Annotated[Keyplane, Depends(kp)]
TenantParam = Annotated[
    str | None, Query(max_length=40, description="Operator credentials: the tenant to act on")
]
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=64)]


def page_out(page: Page[T], render: Callable[[T], object]) -> dict[str, object]:
    return {"items": [render(i) for i in page.items], "next_cursor": page.next_cursor}


def require_json_object(body: object) -> dict[str, object]:
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object", field="body")
    return body
