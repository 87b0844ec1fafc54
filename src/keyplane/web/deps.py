"""Request-level plumbing: the Keyplane container, the authenticated caller, paging."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool

from keyplane.bootstrap import Keyplane
from keyplane.core.decisions import Code
from keyplane.core.errors import RateLimited, ValidationError
from keyplane.core.model import Page
from keyplane.core.rights import Caller
from keyplane.services.auth import authenticate, caller_from
from keyplane.web import credentials, net


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
    """The authenticated credential; cache hits are answered on the event loop."""
    trusted = request.app.state.trusted_proxies
    raw = bearer(request)
    ip = net.client_address(request, trusted)
    tls = net.is_tls(request, trusted)
    request_id = request.scope.get("keyplane.request_id")
    throttle = keyplane.throttle
    wait = throttle.retry_after(AUTH_FAILURES, ip)
    if wait is not None:
        raise too_many_failures(wait, throttle.limit)
    if not raw:
        return authenticate(keyplane.verifier, raw, ip=ip, tls=tls)  # raises: no credential
    verdict = keyplane.verifier.verify_cached(raw, ip=ip, tls=tls)
    if verdict is None:
        verdict = await run_in_threadpool(keyplane.verifier.verify, raw, ip=ip, tls=tls)
    if verdict.decision.code in GUESSES:
        wait = await run_in_threadpool(throttle.failed, AUTH_FAILURES, ip,
                                       request_id=request_id)
        if wait is not None:
            raise too_many_failures(wait, throttle.limit)
    found = caller_from(verdict, ip=ip, request_id=request_id,
                        user_agent=request.headers.get("user-agent"))
    request.scope["keyplane.caller"] = found  # a refusal is audited as this caller's
    return found


AUTH_FAILURES = "auth"  # the failure throttle's count for bearer credentials
GUESSES = frozenset({Code.MALFORMED, Code.NOT_FOUND})  # what a guesser gets; counted per address


def too_many_failures(retry_after: int, limit: int) -> RateLimited:
    return RateLimited("too many failed attempts from this address; try again later",
                       retry_after=retry_after, limit=limit)


CallerDep = Annotated[Caller, Depends(caller)]
KeyplaneDep = Annotated[Keyplane, Depends(kp)]
TenantParam = Annotated[
    str | None, Query(max_length=40, description="Operator credentials: the tenant to act on")
]
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=64)]


def page_out(page: Page, render: object) -> dict[str, object]:
    assert callable(render)
    return {"items": [render(i) for i in page.items], "next_cursor": page.next_cursor}


def require_json_object(body: object) -> dict[str, object]:
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object", field="body")
    return body
