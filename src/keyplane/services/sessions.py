"""Member sign-in: email and password (argon2), server-side sessions, CSRF tokens, throttling.

The session cookie holds a random token; the table holds only its keyed digest, so a database
dump signs nobody in. Failed sign-ins are throttled per account and per client address with the
``limits`` library (in memory, or in Redis when ``KEYPLANE_REDIS_URL`` is set so that every
worker shares the counters). Service accounts never sign in.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from keyplane.core import ids
from keyplane.core.apps import WebSession
from keyplane.core.errors import AuthenticationError, RateLimited, ValidationError
from keyplane.core.model import Principal, Role, Tenant
from keyplane.core.rights import Caller, CredentialKind, principal_rights
from keyplane.services import validate as v
from keyplane.services.connections import Repos
from keyplane.services.context import Context
from keyplane.services.passwords import MAX_PASSWORD, verify_password

log = logging.getLogger("keyplane.sessions")
SESSION_TOKEN_BYTES = 32
BAD_CREDENTIALS = "the email or password is not right"


@dataclass(frozen=True)
class SignedIn:
    """A live session with the member and tenant behind it."""

    session: WebSession
    principal: Principal
    tenant: Tenant

    @property
    def is_admin(self) -> bool:
        return self.principal.role is Role.ADMIN


class SignInThrottle:
    """Failed sign-ins per account and per client address (moving windows)."""

    def __init__(self, per_account: str, per_ip: str, *, redis_url: str | None = None,
                 prefix: str = "keyplane") -> None:
        self.per_account: RateLimitItem = parse(per_account)
        self.per_ip: RateLimitItem = parse(per_ip)
        storage = (
            cast(Storage, storage_from_string(redis_url, key_prefix=f"{prefix}:signin"))
            if redis_url else MemoryStorage()
        )
        self.limiter = MovingWindowRateLimiter(storage)

    def _keys(self, email: str, ip: str | None) -> list[tuple[RateLimitItem, str, str]]:
        keys = [(self.per_account, "account", email)]
        if ip:
            keys.append((self.per_ip, "ip", ip))
        return keys

    def blocked(self, email: str, ip: str | None) -> int | None:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        hit = self.blocking(email, ip)
        return hit[0] if hit is not None else None

    def blocking(self, email: str, ip: str | None) -> tuple[int, int] | None:
        """(seconds until another attempt is allowed, the limit that was reached), or None
        when an attempt is allowed now."""
        try:
            for item, kind, ident in self._keys(email, ip):
                if not self.limiter.test(item, kind, ident):
                    reset = self.limiter.get_window_stats(item, kind, ident).reset_time
                    return max(1, int(reset - time.time()) + 1), item.amount
        except Exception:  # the throttle's store is down: argon2 still bounds the guess rate
            log.warning("sign-in throttle unavailable; allowing the attempt")
        return None

    def failed(self, email: str, ip: str | None) -> None:
        try:
            for item, kind, ident in self._keys(email, ip):
                self.limiter.hit(item, kind, ident)
        except Exception:
            log.warning("sign-in throttle unavailable; failure not counted")

    def succeeded(self, email: str) -> None:
        try:
            self.limiter.clear(self.per_account, "account", email)
        except Exception:
            log.warning("sign-in throttle unavailable")


class SessionService:
    def __init__(self, ctx: Context, repos: Repos, throttle: SignInThrottle, *,
                 lifetime: timedelta) -> None:
        self.ctx = ctx
        self.repos = repos
        self.throttle = throttle
        self.lifetime = lifetime

    def sign_in(self, email: Any, password: Any, *, ip: str | None,
                request_id: str | None = None) -> tuple[str, SignedIn]:
        """A new session for a member, or an error that does not say which part was wrong."""
        if not isinstance(email, str) or not email.strip() or not isinstance(password, str) \
                or not password:
            raise AuthenticationError("enter your email and password", field="email")
        try:
            address = v.email(email)
        except ValidationError:
            raise AuthenticationError("enter a valid email address", field="email") from None
        if len(password) > MAX_PASSWORD:
            raise AuthenticationError(BAD_CREDENTIALS, code="bad_credentials")
        hit = self.throttle.blocking(address, ip)
        if hit is not None:
            raise RateLimited("too many failed sign-ins; try again later", retry_after=hit[0],
                              limit=hit[1], remaining=0)
        with self.ctx.uow(readonly=True) as uow:
            principal = uow.principals.get_by_email(address)
            tenant = uow.tenants.get(principal.tenant_id) if principal else None
        hashed = principal.password_hash if principal is not None else None
        ok = verify_password(password, hashed)  # same cost with or without an account
        if (not ok or principal is None or not principal.can_sign_in or tenant is None
                or not tenant.enabled):
            self.throttle.failed(address, ip)
            anonymous = Caller(kind=CredentialKind.SESSION, scopes=frozenset(), ip=ip,
                               request_id=request_id)
            with self.ctx.uow() as uow:
                self.ctx.audit(uow, anonymous, "session.signin_failed",
                               principal.id if principal else "unknown",
                               tenant_id=principal.tenant_id if principal else None,
                               outcome="failure")
                uow.commit()
            raise AuthenticationError(BAD_CREDENTIALS, code="bad_credentials")
        self.throttle.succeeded(address)
        raw = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self.ctx.clock.now()
        session = WebSession(id=ids.new_id("ses"), digest=self.ctx.hasher.digest(raw),
                             pepper_id=self.ctx.hasher.current.id, principal_id=principal.id,
                             tenant_id=principal.tenant_id, created_at=now,
                             expires_at=now + self.lifetime, ip=ip)
        actor = Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                       tenant_id=principal.tenant_id, principal_id=principal.id, ip=ip,
                       request_id=request_id)
        with self.ctx.uow() as uow:
            self.repos(uow).sessions.add(session)
            self.ctx.audit(uow, actor, "session.signed_in", session.id,
                           tenant_id=principal.tenant_id)
            uow.commit()
        return raw, SignedIn(session=session, principal=principal, tenant=tenant)

    def resolve(self, raw: str | None) -> SignedIn | None:
        """The live session behind a cookie value, or None."""
        if not raw or len(raw) > 100:
            return None
        now = self.ctx.clock.now()
        with self.ctx.uow(readonly=True) as uow:
            repos = self.repos(uow)
            session = None
            for _pid, digest in self.ctx.hasher.candidates(raw):
                found = repos.sessions.find(digest)
                if found is not None and hmac.compare_digest(found.digest, digest):
                    session = found
                    break
            if session is None or session.revoked_at is not None or now >= session.expires_at:
                return None
            principal = uow.principals.get(session.tenant_id, session.principal_id)
            tenant = uow.tenants.get(session.tenant_id)
        if principal is None or not principal.can_sign_in or tenant is None or not tenant.enabled:
            return None
        return SignedIn(session=session, principal=principal, tenant=tenant)

    def sign_out(self, signed_in: SignedIn, *, ip: str | None = None) -> None:
        with self.ctx.uow() as uow:
            session = signed_in.session
            session.revoked_at = self.ctx.clock.now()
            self.repos(uow).sessions.update(session)
            self.ctx.audit(uow, self.caller(signed_in, ip=ip), "session.signed_out", session.id,
                           tenant_id=session.tenant_id)
            uow.commit()

    def caller(self, signed_in: SignedIn, *, ip: str | None = None,
               request_id: str | None = None) -> Caller:
        """The member as a management caller (credential kind ``session``)."""
        p = signed_in.principal
        with self.ctx.uow(readonly=True) as uow:
            rights = principal_rights(p, uow.groups.get_many(p.group_ids), self.ctx.catalogue())
        return Caller(kind=CredentialKind.SESSION, scopes=rights, tenant_id=p.tenant_id,
                      principal_id=p.id, ip=ip, request_id=request_id)

    # -- CSRF ----------------------------------------------------------------------------------

    def csrf_token(self, binding: str) -> str:
        """A form token bound to the session (or pre-session) cookie value: an attacker's page
        cannot read the cookie, so it cannot forge the token."""
        return self.ctx.hasher.digest(f"csrf:{binding}")[:40]

    def csrf_ok(self, binding: str | None, presented: Any) -> bool:
        if not binding or not isinstance(presented, str) or not presented:
            return False
        return hmac.compare_digest(self.csrf_token(binding), presented)


def new_binding() -> str:
    """A random pre-session value for the CSRF cookie of forms shown before sign-in."""
    return secrets.token_urlsafe(24)
