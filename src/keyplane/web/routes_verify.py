"""POST /v1/verify: may this credential make this request? Always 200 for a well-formed call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from keyplane.core.errors import ValidationError
from keyplane.core.policy import parse_address
from keyplane.services.verify import NOT_FOUND, Verdict
from keyplane.web.deps import CallerDep, KeyplaneDep
from keyplane.web.schemas import Verify, ts

router = APIRouter(tags=["verify"])


def verdict_out(verdict: Verdict) -> dict[str, Any]:
    snap = verdict.snapshot
    out: dict[str, Any] = {
        "valid": verdict.valid, "code": verdict.decision.code.value,
        "message": verdict.decision.reason, "key_id": None, "tenant_id": None,
        "owner_id": None, "name": None, "scopes": [], "expires_at": None,
        "ratelimit": verdict.ratelimit,
    }
    if snap is not None:
        out.update(key_id=snap.key_id, tenant_id=snap.tenant_id, owner_id=snap.owner_id,
                   name=snap.name, expires_at=ts(snap.expires_at))
        if verdict.valid:
            out["scopes"] = sorted(snap.scopes)
    return out


@router.post("/v1/verify", summary="Verify a key or access token for one request")
async def verify(body: Verify, caller: CallerDep, kp: KeyplaneDep) -> dict[str, Any]:
    caller.require("keys:verify")
    raw = body.key.strip().rpartition(":")[2]  # "<name>:<key>" is accepted too
    ip = None
    if body.ip is not None:
        ip = parse_address(body.ip)
        if ip is None:
            raise ValidationError("ip is not an IPv4 or IPv6 address", field="ip")
    required = frozenset(body.scopes)
    verdict = kp.verifier.verify_cached(raw, required=required, ip=ip, tls=body.tls)
    if verdict is None:
        verdict = await run_in_threadpool(
            kp.verifier.verify, raw, required=required, ip=ip, tls=body.tls
        )
    snap = verdict.snapshot
    if snap is not None and caller.tenant_id is not None and snap.tenant_id != caller.tenant_id:
        # a tenant's verifier cannot learn anything about other tenants' keys
        return verdict_out(Verdict(NOT_FOUND))
    return verdict_out(verdict)
