"""TOTP two-factor sign-in (pyotp): enrol, confirm with a first code, recovery codes, disable.

The secret is sealed (AES-GCM under a server pepper, bound to the member's id) and never stored
in clear; recovery codes are stored as keyed digests and each works once. A code is accepted
for the current 30-second step or one either side, and never for a step at or before the last
one accepted (no replay). Wrong codes are throttled per member.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, Protocol

import pyotp

from keyplane.core.attempts import Limit
from keyplane.core.errors import AuthenticationError, Conflict, RateLimited
from keyplane.core.model import Principal, Tenant
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, CredentialKind
from keyplane.core.sign_in import SecondFactor, SignInRepos
from keyplane.services.context import Context
from keyplane.services.sessions import requires_two_factor
from keyplane.services.throttle import FailureThrottle

STEP_SECONDS = 30
RECOVERY_CODES = 10
WRONG_CODES = Limit(5, 300, "totp")  # per member
WRONG_CODE = "that code is not right; enter the current 6-digit code from your app"
POLICY_KEEPS = "two_factor_required"


class Sealer(Protocol):
    def seal(self, plain: str, context: str) -> str: ...
    def unseal(self, sealed: str, context: str) -> str: ...


def _normalise(code: Any) -> str:
    if not isinstance(code, str):
        return ""
    return "".join(code.split()).replace("-", "").lower()[:40]


@dataclass(frozen=True)
class Enrolment:
    """What the person types into their authenticator app (never stored in clear)."""

    secret: str
    uri: str  # otpauth://totp/...


class TwoFactorService:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], SignInRepos],
                 sealer: Sealer, throttle: FailureThrottle, *, issuer: str = "Keyplane") -> None:
        self.ctx = ctx
        self.repos = repos
        self.sealer = sealer
        self.throttle = throttle
        self.issuer = issuer

    def _repos(self, uow: UnitOfWork) -> SignInRepos:
        return self.repos(uow)

    @staticmethod
    def _context(principal_id: str) -> str:
        return f"totp:{principal_id}"

    def factor(self, principal_id: str) -> SecondFactor | None:
        with self.ctx.uow(readonly=True) as uow:
            return self._repos(uow).factors.get(principal_id)

    def enrolled(self, principal_id: str) -> bool:
        found = self.factor(principal_id)
        return found is not None and found.confirmed_at is not None

    def _enrolment(self, principal: Principal, secret: str) -> Enrolment:
        uri = pyotp.TOTP(secret).provisioning_uri(name=principal.email or principal.id,
                                                  issuer_name=self.issuer)
        return Enrolment(secret=secret, uri=uri)

    def pending(self, principal: Principal) -> Enrolment | None:
        """The unconfirmed secret being set up, to show again to its own person."""
        found = self.factor(principal.id)
        if found is None or found.confirmed_at is not None:
            return None
        return self._enrolment(principal, self.sealer.unseal(found.sealed_secret,
                                                              self._context(principal.id)))

    def start(self, caller: Caller, principal: Principal) -> Enrolment:
        """A new secret for ``principal`` (the caller themself), waiting for a first code."""
        secret = pyotp.random_base32()
        with self.ctx.uow() as uow:
            repos = self._repos(uow)
            existing = repos.factors.get(principal.id, for_update=True)
            if existing is not None and existing.confirmed_at is not None:
                raise Conflict("two-factor sign-in is already on; turn it off first",
                               code="two_factor_enrolled")
            repos.factors.put(SecondFactor(
                principal_id=principal.id, tenant_id=principal.tenant_id,
                sealed_secret=self.sealer.seal(secret, self._context(principal.id)),
                created_at=self.ctx.clock.now()))
            uow.commit()
        return self._enrolment(principal, secret)

    def confirm(self, caller: Caller, principal: Principal, code: Any) -> list[str]:
        """Turn the pending factor on with a first good code; the recovery codes, shown once."""
        self._throttled(principal.id)
        codes = [f"{secrets.token_hex(3)}-{secrets.token_hex(3)}" for _ in range(RECOVERY_CODES)]
        with self.ctx.uow() as uow:
            repos = self._repos(uow)
            factor = repos.factors.get(principal.id, for_update=True)
            if factor is None or factor.confirmed_at is not None:
                raise Conflict("there is no two-factor set-up waiting for a code; start again",
                               code="no_pending_two_factor")
            step = self._totp_step(factor, _normalise(code))
            if step is None:
                self._wrong(principal.id)
            factor.last_step = step
            factor.confirmed_at = self.ctx.clock.now()
            factor.recovery_digests = [self._recovery_digest(principal.id, c) for c in codes]
            repos.factors.put(factor)
            self.ctx.audit(uow, caller, "member.two_factor_enabled", principal.id,
                           tenant_id=principal.tenant_id)
            uow.commit()
        self.throttle.reset(WRONG_CODES, "totp", principal.id)
        return codes

    def disable(self, caller: Caller, principal: Principal, tenant: Tenant, code: Any) -> None:
        """Turn it off, with a fresh code (or a recovery code). An admin of a tenant whose
        policy requires two-factor cannot."""
        if requires_two_factor(principal, tenant):
            raise Conflict(f"{tenant.name} requires admins to use two-factor sign-in",
                           code=POLICY_KEEPS)
        self.verify(principal, code)
        with self.ctx.uow() as uow:
            self._repos(uow).factors.delete(principal.id)
            self.ctx.audit(uow, caller, "member.two_factor_disabled", principal.id,
                           tenant_id=principal.tenant_id)
            uow.commit()

    def verify(self, principal: Principal, code: Any, *, recovery: bool = True) -> datetime:
        """Check a code of the member's confirmed factor (a TOTP code, or once each a recovery
        code); when it was accepted, or AuthenticationError / RateLimited."""
        self._throttled(principal.id)
        typed = _normalise(code)
        used_recovery = False
        with self.ctx.uow() as uow:
            repos = self._repos(uow)
            factor = repos.factors.get(principal.id, for_update=True)
            if factor is None or factor.confirmed_at is None:
                raise AuthenticationError("two-factor sign-in is not set up", code="no_factor")
            step = self._totp_step(factor, typed) if typed.isdigit() else None
            if step is not None:
                factor.last_step = step
            elif recovery and typed:
                digests = [d for _pid, d in self.ctx.hasher.candidates(
                    f"recovery:{principal.id}:{typed}")]  # made under any configured pepper
                left = [d for d in factor.recovery_digests
                        if not any(hmac.compare_digest(d, c) for c in digests)]
                used_recovery = len(left) < len(factor.recovery_digests)
                factor.recovery_digests = left
            if step is None and not used_recovery:
                self._wrong(principal.id)  # raises: leaving the block rolls back
            repos.factors.put(factor)
            if used_recovery:
                self.ctx.audit(uow, self_caller(principal), "member.recovery_code_used",
                               principal.id, tenant_id=principal.tenant_id,
                               recovery_codes_left=len(factor.recovery_digests))
            uow.commit()
        self.throttle.reset(WRONG_CODES, "totp", principal.id)
        return self.ctx.clock.now()

    def _throttled(self, principal_id: str) -> None:
        wait = self.throttle.wait(WRONG_CODES, "totp", principal_id)
        if wait is not None:
            raise RateLimited("too many wrong codes; wait a few minutes and try again",
                              retry_after=wait, limit=WRONG_CODES.amount, remaining=0)

    def _wrong(self, principal_id: str) -> NoReturn:
        self.throttle.count(WRONG_CODES, "totp", principal_id)
        raise AuthenticationError(WRONG_CODE, code="bad_code", field="code")

    def _totp_step(self, factor: SecondFactor, typed: str) -> int | None:
        """The time step ``typed`` is the code of (now, or one step either side), if newer
        than the last accepted one."""
        if len(typed) != 6 or not typed.isdigit():
            return None
        totp = pyotp.TOTP(self.sealer.unseal(factor.sealed_secret,
                                             self._context(factor.principal_id)))
        now = int(self.ctx.clock.now().timestamp()) // STEP_SECONDS
        found = None
        for step in (now - 1, now, now + 1):  # every step compared: no early exit
            if hmac.compare_digest(totp.at(step * STEP_SECONDS), typed) \
                    and step > factor.last_step:
                found = step
        return found

    def _recovery_digest(self, principal_id: str, code: str) -> str:
        return self.ctx.hasher.digest(f"recovery:{principal_id}:{_normalise(code)}")


def self_caller(principal: Principal, ip: str | None = None) -> Caller:
    """The member acting on their own sign-in (no rights beyond that)."""
    return Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                  tenant_id=principal.tenant_id, principal_id=principal.id, ip=ip)
