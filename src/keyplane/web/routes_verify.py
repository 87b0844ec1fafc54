"""POST /v1/verify: may this credential make this request? Always 200 for a well-formed call."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from keyplane.bootstrap import Keyplane
from keyplane.core.decisions import Code, Denied
from keyplane.core.errors import ValidationError
from keyplane.core.policy import parse_address
from keyplane.core.rights import Caller
from keyplane.core.views import ts
from keyplane.services.verify import NOT_FOUND, Verdict
from keyplane.web.credentials import key_in
from keyplane.web.deps import GUESSES, CallerDep, KeyplaneDep
from keyplane.web.schemas import Verify

router = APIRouter(tags=["verify"])


def verdict_out(verdict: Verdict) -> dict[str, Any]:
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
            # may an SDK reuse this answer? Not when every use must be counted here
            out["cacheable"] = not snap.counted
    return out


LocationHeader = Annotated[str | None, Header(
    alias="X-Location-Id", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$",
    description="The Location ID given beside the key, as a header (the body's tenant_id wins)")]


@router.post("/v1/verify", summary="Verify a key or access token for one request")
async def verify(body: Verify, caller: CallerDep, kp: KeyplaneDep,
                 request: Request, location: LocationHeader = None) -> dict[str, Any]:
    if body.tenant_id is None and location is not None:
        body = body.model_copy(update={"tenant_id": location})
    out = await _verify(body, caller, kp)
    request.app.state.metrics.verified(out["code"])
    return out


async def _verify(body: Verify, caller: Caller, kp: Keyplane) -> dict[str, Any]:
    caller.require("keys:verify")
    raw = key_in(body.key)  # "<name>:<key>" and the raw header value "Bearer …" too
    ip = None
    if body.ip is not None:
        ip = parse_address(body.ip)
        if ip is None:
            raise ValidationError("ip is not an IPv4 or IPv6 address", field="ip")
    required = frozenset(body.scopes)
    # an address that keeps presenting unknown keys is slowed like a caller: the end user's
    # (``ip``) when the verifier names it, else the verifier's own
    subject = ip if ip is not None else parse_address(caller.ip)
    wait = kp.throttle.retry_after(VERIFY_FAILURES, subject)
    if wait is not None:
        return throttled_out(kp, wait)
    verdict = kp.verifier.verify_cached(raw, required=required, ip=ip, tls=body.tls)
    if verdict is None:
        verdict = await run_in_threadpool(
            kp.verifier.verify, raw, required=required, ip=ip, tls=body.tls
        )
    verdict = at_location(as_seen_by(caller, verdict), body.tenant_id)
    if verdict.decision.code in GUESSES:
        wait = await run_in_threadpool(kp.throttle.failed, VERIFY_FAILURES, subject,
                                       request_id=caller.request_id)
        if wait is not None:
            return throttled_out(kp, wait)
    return verdict_out(verdict)


def as_seen_by(caller: Caller, verdict: Verdict) -> Verdict:
    """A tenant's verifier cannot learn anything about other tenants' keys."""
    snap = verdict.snapshot
    if snap is not None and caller.tenant_id is not None and snap.tenant_id != caller.tenant_id:
        return Verdict(NOT_FOUND)
    return verdict


def at_location(verdict: Verdict, tenant_id: str | None) -> Verdict:
    """With a Location ID beside the key, a key of another tenant is unknown (and counted as a
    guess)."""
    snap = verdict.snapshot
    if tenant_id is not None and snap is not None and snap.tenant_id != tenant_id:
        return Verdict(NOT_FOUND)
    return verdict


# the failure throttle's count for guesses at /v1/verify: per end-user address (body ``ip``),
# or per verifier address when the body names none
VERIFY_FAILURES = "verify"


def throttled_out(kp: Keyplane, wait: int) -> dict[str, Any]:
    """RATE_LIMITED for an address over the failure limit, whatever key it presents now."""
    out = verdict_out(Verdict(Denied(Code.RATE_LIMITED, "too many failed attempts from this "
                                     "address; try again later")))
    out["ratelimit"] = {"limit": kp.throttle.limit, "remaining": 0,
                        "reset_at": math.ceil(time.time()) + wait}
    return out
