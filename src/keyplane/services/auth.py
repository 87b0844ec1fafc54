"""What a verified credential stands for: a Caller, or the error that refuses it.

Authenticating a call (the failure throttle, guesses counted, each request's credential
verified once) is ``VerifyService.authenticate`` (services/verification.py)."""

from __future__ import annotations

import math
import time

from keyplane.core.decisions import Code
from keyplane.core.errors import AuthenticationError, PermissionDenied, RateLimited
from keyplane.core.policy import Address
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services.verify import Verdict

_FORBIDDEN = {Code.IP_NOT_ALLOWED, Code.TLS_REQUIRED}


def rate_limited(verdict: Verdict) -> RateLimited:
    """The 429 for a credential over its own rate limit or usage quota."""
    info = verdict.ratelimit or {}
    retry = 1
    if "reset_at" in info:
        retry = max(1, math.ceil(info["reset_at"] - time.time()))
    # a used-up usage quota on a key without a rate limit reports a limit of 0
    return RateLimited(verdict.decision.reason, retry_after=retry, limit=info.get("limit", 0),
                       remaining=info.get("remaining", 0))


def caller_from(verdict: Verdict, *, ip: Address | None, request_id: str | None,
                user_agent: str | None = None) -> Caller:
    """The caller a verdict stands for, or the error that refuses it."""
    snap = verdict.snapshot
    if not verdict.valid or snap is None:
        code = verdict.decision.code
        if code in _FORBIDDEN:
            raise PermissionDenied(verdict.decision.reason, code=code.value.lower())
        if code is Code.RATE_LIMITED:
            raise rate_limited(verdict)
        # unknown, malformed, expired, revoked and locked look alike: no state oracle
        raise AuthenticationError("the credential is not valid", code="invalid_credential")
    if snap.kind == "access_token":
        kind = CredentialKind.ACCESS_TOKEN
    elif snap.tenant_id is None:
        kind = CredentialKind.OPERATOR_KEY
    else:
        kind = CredentialKind.TENANT_KEY
    return Caller(kind=kind, scopes=snap.scopes, tenant_id=snap.tenant_id,
                  principal_id=snap.owner_id, key_id=snap.key_id,
                  ip=str(ip) if ip else None, request_id=request_id,
                  user_agent=user_agent[:200] if user_agent else None)
