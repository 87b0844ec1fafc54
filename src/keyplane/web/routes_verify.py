"""POST /v1/verify: may this credential make this request? Always 200 for a well-formed call.

Parse, ask services/verification.py (which owns every rule), encode."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from keyplane.core.views import ts
from keyplane.services.verification import Answer, VerifyRequest
from keyplane.web.credentials import key_in
from keyplane.web.deps import CallerDep, KeyplaneDep, bearer, peer_of
from keyplane.web.schemas import Verify

router = APIRouter(tags=["verify"])


def answer_out(answer: Answer) -> dict[str, Any]:
    verdict = answer.verdict
    snap = verdict.snapshot
    out: dict[str, Any] = {
        "valid": verdict.valid, "code": verdict.decision.code.value,
        "message": verdict.decision.reason, "key_id": None, "tenant_id": None,
        "owner_id": None, "name": None, "kind": None, "app_id": None, "scopes": [],
        "expires_at": None, "ratelimit": verdict.ratelimit, "cacheable": False,
    }
    if snap is not None:
        out.update(key_id=snap.key_id, tenant_id=snap.tenant_id, owner_id=snap.owner_id,
                   name=snap.name, kind=snap.kind, app_id=snap.meta.get("app_id"),
                   expires_at=ts(snap.expires_at))
        if verdict.valid:
            out["scopes"] = sorted(snap.scopes)
            out["cacheable"] = answer.cacheable
    return out


LocationHeader = Annotated[str | None, Header(
    alias="X-Location-Id", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$",
    description="The Location ID given beside the key, as a header (the body's tenant_id wins)")]


@router.post("/v1/verify", summary="Verify a key or access token for one request")
async def verify(body: Verify, _caller: CallerDep, kp: KeyplaneDep,
                 request: Request, location: LocationHeader = None) -> dict[str, Any]:
    # the caller dependency authenticated first (a 401 before a 422, as on every route); the
    # service remembers it in the request's Peer and does not count it again
    question = VerifyRequest(key_in(body.key), frozenset(body.scopes), body.ip, body.tls,
                             body.tenant_id if body.tenant_id is not None else location)
    credential, peer = bearer(request), peer_of(request)
    service = kp.verification
    answer = service.answer_if_cached(credential, peer, question)
    if answer is None:
        answer = await run_in_threadpool(service.answer, credential, peer, question)
    out = answer_out(answer)
    request.app.state.metrics.verified(out["code"])
    return out
