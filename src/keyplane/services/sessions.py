"""Member sign-in: email and password (argon2), server-side sessions, CSRF tokens, throttling.

The session cookie holds a random token; the table holds only its keyed digest, so a database
dump signs nobody in. Failed sign-ins are throttled per account and per client address by the
one failed-attempt policy (``services/throttle.py``). Service accounts never sign in.

One email may be a member of several tenants, each membership with its own password: a sign-in
opens exactly the memberships whose password matched, and asks which workspace when there are
several. A new password ends the member's sessions (``PrincipalService``).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

from keyplane.core import ids
from keyplane.core.apps import WebSession
from keyplane.core.errors import AuthenticationError, RateLimited, ValidationError
from keyplane.core.model import Principal, Role, Tenant
from keyplane.core.rights import Caller, CredentialKind, principal_rights
from keyplane.services import validate as v
from keyplane.services.connections import Repos
from keyplane.services.context import Context
from keyplane.services.passwords import MAX_PASSWORD, verify_password
from keyplane.services.throttle import FailureThrottle

log = logging.getLogger("keyplane.sessions")
SESSION_TOKEN_BYTES = 32
BAD_CREDENTIALS = "the email or password is not right"
CHOICE_SECONDS = 300  # how long the "Choose a workspace" page stays valid
SECOND_FACTOR_SECONDS = 300  # how long the code page after a right password stays valid
FRESH_FACTOR = timedelta(minutes=5)  # a second factor proved this recently counts as fresh


class SecondFactorCheck(Protocol):
    """The TOTP service as sign-in sees it (``services.two_factor``)."""

    def enrolled(self, principal_id: str) -> bool: ...
    def verify(self, principal: Principal, code: Any, *, recovery: bool = True) -> datetime: ...


def requires_two_factor(principal: Principal, tenant: Tenant) -> bool:
    """The tenant's policy "admins must use two-factor" applies to this person."""
    return tenant.policy.require_admin_two_factor and principal.role is Role.ADMIN


@dataclass(frozen=True)
class Workspace:
    """One membership a password opened: what the person sees on the choice page."""

    principal_id: str
    tenant_name: str
    role: str


@dataclass(frozen=True)
class ChooseWorkspace:
    """The password opened several memberships: the person picks one. ``token`` proves it
    for a few minutes, in the browser it was issued to."""

    token: str
    workspaces: list[Workspace]


@dataclass(frozen=True)
class SecondFactorNeeded:
    """The password was right and the member has two-factor on: the code page. ``token``
    proves the password for a few minutes, in the browser it was issued to; no session
    exists until the code is right (then a new one, with a new id)."""

    token: str
    tenant_name: str


@dataclass(frozen=True)
class SignedIn:
    """A live session with the member and tenant behind it."""

    session: WebSession
    principal: Principal
    tenant: Tenant
    two_factor: bool = False  # the member has a confirmed TOTP factor

    @property
    def is_admin(self) -> bool:
        return self.principal.role is Role.ADMIN

    @property
    def must_enrol(self) -> bool:
        """An admin of a tenant that requires two-factor, without it: enrol before anything."""
        return requires_two_factor(self.principal, self.tenant) and not self.two_factor


class SessionService:
    def __init__(self, ctx: Context, repos: Repos, throttle: FailureThrottle, *,
                 lifetime: timedelta, second_factor: SecondFactorCheck) -> None:
        self.ctx = ctx
        self.repos = repos
        self.throttle = throttle
        self.lifetime = lifetime
        self.second_factor = second_factor

    def sign_in(self, email: Any, password: Any, *, ip: str | None,
                request_id: str | None = None, user_agent: str | None = None,
                binding: str = "") -> tuple[str, SignedIn] | ChooseWorkspace | SecondFactorNeeded:
        """A new session for a member, or an error that does not say which part was wrong.

        One email may belong to members of several tenants, each with its own password. The
        password is checked against every one of them (argon2 each; at least one hash even
        when there is none) and opens only the memberships it matches: a tenant that adds
        someone's address with a password of its own choosing opens its own membership and
        nothing else. One match signs in; several answer :class:`ChooseWorkspace`, whose
        token (bound to ``binding``, the browser's CSRF cookie) :meth:`choose` redeems."""
        if not isinstance(email, str) or not email.strip() or not isinstance(password, str) \
                or not password:
            raise AuthenticationError("enter your email and password", field="email")
        try:
            address = v.email(email)
        except ValidationError:
            raise AuthenticationError("enter a valid email address", field="email") from None
        if len(password) > MAX_PASSWORD:
            raise AuthenticationError(BAD_CREDENTIALS, code="bad_credentials")
        hit = self.throttle.signin_refused(address, ip, request_id=request_id)
        if hit is not None:
            raise RateLimited("too many failed sign-ins; try again later", retry_after=hit[0],
                              limit=hit[1], remaining=0)
        with self.ctx.uow(readonly=True) as uow:
            members = uow.principals.members_with_email(address)
            tenants = {t.id: t for t in (uow.tenants.get(tid)
                                         for tid in {m.tenant_id for m in members}) if t}
        matched: list[Principal] = []
        for member in members:  # a hash per membership, so no membership is skipped early
            if verify_password(password, member.password_hash) and member.can_sign_in:
                tenant = tenants.get(member.tenant_id)
                if tenant is not None and tenant.enabled:
                    matched.append(member)
        if not members:
            verify_password(password, None)  # the same cost with or without an account
        if not matched:
            self._failed(address, members, ip=ip, request_id=request_id, user_agent=user_agent)
        self.throttle.signin_succeeded(address)
        if len(matched) == 1:
            return self._admit(matched[0], tenants[matched[0].tenant_id], binding=binding,
                               ip=ip, request_id=request_id, user_agent=user_agent)
        expires = int(self.ctx.clock.now().timestamp()) + CHOICE_SECONDS
        refs = ",".join(f"{m.tenant_id}:{m.id}" for m in matched)
        token = f"{expires}.{refs}.{self._choice_mac(binding, expires, refs, matched)}"
        return ChooseWorkspace(token=token, workspaces=[
            Workspace(principal_id=m.id, tenant_name=tenants[m.tenant_id].name,
                      role=m.role.value.replace("_", " ")) for m in matched])

    def choose(self, token: Any, principal_id: Any, *, binding: str, ip: str | None,
               request_id: str | None = None,
               user_agent: str | None = None) -> tuple[str, SignedIn] | SecondFactorNeeded:
        """Redeem a :class:`ChooseWorkspace` token for a session as one of its members."""
        expired = AuthenticationError("this sign-in has expired; please sign in again",
                                      code="choice_expired")
        if not isinstance(token, str) or not isinstance(principal_id, str) or len(token) > 4000:
            raise expired
        expires_text, _, rest = token.partition(".")
        refs, _, mac = rest.rpartition(".")
        pairs = [ref.split(":", 1) for ref in refs.split(",") if ":" in ref]
        if not expires_text.isdigit() or not pairs or not binding \
                or int(expires_text) <= self.ctx.clock.now().timestamp():
            raise expired
        with self.ctx.uow(readonly=True) as uow:
            members = [uow.principals.get(tid, pid) for tid, pid in pairs]
            chosen = next((m for m in members if m is not None and m.id == principal_id), None)
            tenant = uow.tenants.get(chosen.tenant_id) if chosen is not None else None
        if any(m is None for m in members):
            raise expired
        # the MAC covers each member's password hash: a password changed since then voids it
        good = self._choice_mac(binding, int(expires_text), refs, [m for m in members if m])
        if not hmac.compare_digest(good, mac) or chosen is None:
            raise expired
        if not chosen.can_sign_in or tenant is None or not tenant.enabled:
            raise AuthenticationError(BAD_CREDENTIALS, code="bad_credentials")
        return self._admit(chosen, tenant, binding=binding, ip=ip, request_id=request_id,
                           user_agent=user_agent)

    # -- the second factor ----------------------------------------------------------------------

    def _admit(self, principal: Principal, tenant: Tenant, *, binding: str, ip: str | None,
               request_id: str | None,
               user_agent: str | None = None) -> tuple[str, SignedIn] | SecondFactorNeeded:
        """A session now, or first the code page when the member has two-factor on."""
        if not self.second_factor.enrolled(principal.id):
            return self._open(principal, tenant, ip=ip, request_id=request_id,
                              user_agent=user_agent)
        expires = int(self.ctx.clock.now().timestamp()) + SECOND_FACTOR_SECONDS
        ref = f"{principal.tenant_id}:{principal.id}"
        mac = self._factor_mac(binding, expires, ref, principal)
        return SecondFactorNeeded(token=f"{expires}.{ref}.{mac}", tenant_name=tenant.name)

    def _factor_mac(self, binding: str, expires: int, ref: str, principal: Principal) -> str:
        # covers the password hash: a password changed since then voids the proof
        return self.ctx.hasher.digest(
            f"second-factor:{binding}:{expires}:{ref}:{principal.password_hash or ''}")

    def complete(self, token: Any, code: Any, *, binding: str, ip: str | None,
                 request_id: str | None = None,
                 user_agent: str | None = None) -> tuple[str, SignedIn]:
        """Redeem a :class:`SecondFactorNeeded` token and a right code (TOTP, or a recovery
        code once) for a new session."""
        expired = AuthenticationError("this sign-in has expired; please sign in again",
                                      code="choice_expired")
        if not isinstance(token, str) or len(token) > 400 or not binding:
            raise expired
        expires_text, _, rest = token.partition(".")
        ref, _, mac = rest.rpartition(".")
        tenant_id, _, principal_id = ref.partition(":")
        if not expires_text.isdigit() or not principal_id \
                or int(expires_text) <= self.ctx.clock.now().timestamp():
            raise expired
        with self.ctx.uow(readonly=True) as uow:
            principal = uow.principals.get(tenant_id, principal_id)
            tenant = uow.tenants.get(tenant_id)
        if principal is None or tenant is None or not hmac.compare_digest(
                self._factor_mac(binding, int(expires_text), ref, principal), mac):
            raise expired
        if not principal.can_sign_in or not tenant.enabled:
            raise AuthenticationError(BAD_CREDENTIALS, code="bad_credentials")
        try:
            at = self.second_factor.verify(principal, code)
        except AuthenticationError:
            actor = Caller(kind=CredentialKind.SESSION, scopes=frozenset(), ip=ip,
                           request_id=request_id, user_agent=_agent(user_agent))
            with self.ctx.uow() as uow:
                self.ctx.audit(uow, actor, "session.second_factor_failed", principal.id,
                               tenant_id=principal.tenant_id, outcome="failure")
                uow.commit()
            raise
        return self._open(principal, tenant, ip=ip, request_id=request_id,
                          user_agent=user_agent, second_factor_at=at)

    def fresh(self, signed_in: SignedIn) -> bool:
        """Whether an action that asks for a fresh second factor may go ahead without a code:
        the member has none, or proved it in this session within the last few minutes."""
        if not signed_in.two_factor:
            return True
        at = signed_in.session.second_factor_at
        return at is not None and self.ctx.clock.now() - at < FRESH_FACTOR

    def prove(self, signed_in: SignedIn, code: Any) -> SignedIn:
        """A fresh code for this session (TOTP only: recovery codes are for signing in)."""
        at = self.second_factor.verify(signed_in.principal, code, recovery=False)
        return self.mark_fresh(signed_in, at)

    def mark_fresh(self, signed_in: SignedIn, at: datetime | None = None) -> SignedIn:
        """Record that this session just proved the member's second factor."""
        session = signed_in.session
        session.second_factor_at = at or self.ctx.clock.now()
        with self.ctx.uow() as uow:
            self.repos(uow).sessions.update(session)
            uow.commit()
        return signed_in

    def _choice_mac(self, binding: str, expires: int, refs: str,
                    members: list[Principal]) -> str:
        hashes = "\n".join(m.password_hash or "" for m in members)
        return self.ctx.hasher.digest(f"workspace:{binding}:{expires}:{refs}:{hashes}")

    def _failed(self, address: str, members: list[Principal], *, ip: str | None,
                request_id: str | None, user_agent: str | None = None) -> NoReturn:
        self.throttle.signin_failed(address, ip)
        anonymous = Caller(kind=CredentialKind.SESSION, scopes=frozenset(), ip=ip,
                           request_id=request_id, user_agent=_agent(user_agent))
        with self.ctx.uow() as uow:
            targets: list[tuple[str, str | None]] = [(m.id, m.tenant_id) for m in members]
            for target, tenant_id in targets or [("unknown", None)]:  # each tenant: its member
                self.ctx.audit(uow, anonymous, "session.signin_failed", target,
                               tenant_id=tenant_id, outcome="failure")
            uow.commit()
        raise AuthenticationError(BAD_CREDENTIALS, code="bad_credentials")

    def _open(self, principal: Principal, tenant: Tenant, *, ip: str | None,
              request_id: str | None, user_agent: str | None = None,
              second_factor_at: datetime | None = None) -> tuple[str, SignedIn]:
        raw = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self.ctx.clock.now()
        session = WebSession(id=ids.new_id("ses"), digest=self.ctx.hasher.digest(raw),
                             pepper_id=self.ctx.hasher.current.id, principal_id=principal.id,
                             tenant_id=principal.tenant_id, created_at=now,
                             expires_at=now + self.lifetime, ip=ip,
                             second_factor_at=second_factor_at)
        actor = Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                       tenant_id=principal.tenant_id, principal_id=principal.id, ip=ip,
                       request_id=request_id, user_agent=_agent(user_agent))
        with self.ctx.uow() as uow:
            self.repos(uow).sessions.add(session)
            self.ctx.audit(uow, actor, "session.signed_in", session.id,
                           tenant_id=principal.tenant_id,
                           second_factor=second_factor_at is not None)
            uow.commit()
        return raw, SignedIn(session=session, principal=principal, tenant=tenant,
                             two_factor=second_factor_at is not None)

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
        return SignedIn(session=session, principal=principal, tenant=tenant,
                        two_factor=self.second_factor.enrolled(principal.id))

    def sign_out(self, signed_in: SignedIn, *, ip: str | None = None,
                 user_agent: str | None = None) -> None:
        with self.ctx.uow() as uow:
            session = signed_in.session
            session.revoked_at = self.ctx.clock.now()
            self.repos(uow).sessions.update(session)
            self.ctx.audit(uow, self.caller(signed_in, ip=ip, user_agent=user_agent),
                           "session.signed_out", session.id,
                           tenant_id=session.tenant_id)
            uow.commit()

    def caller(self, signed_in: SignedIn, *, ip: str | None = None,
               request_id: str | None = None, user_agent: str | None = None) -> Caller:
        """The member as a management caller (credential kind ``session``)."""
        p = signed_in.principal
        with self.ctx.uow(readonly=True) as uow:
            rights = principal_rights(p, uow.groups.get_many(p.group_ids), self.ctx.catalogue())
        return Caller(kind=CredentialKind.SESSION, scopes=rights, tenant_id=p.tenant_id,
                      principal_id=p.id, ip=ip, request_id=request_id,
                      user_agent=_agent(user_agent), session_id=signed_in.session.id)

    # -- CSRF ----------------------------------------------------------------------------------

    def csrf_token(self, binding: str) -> str:
        """A form token bound to the session (or pre-session) cookie value: an attacker's page
        cannot read the cookie, so it cannot forge the token."""
        return self.ctx.hasher.digest(f"csrf:{binding}")[:40]

    def csrf_ok(self, binding: str | None, presented: Any) -> bool:
        if not binding or not isinstance(presented, str) or not presented:
            return False
        return hmac.compare_digest(self.csrf_token(binding), presented)


def _agent(user_agent: str | None) -> str | None:
    """The User-Agent as the audit log keeps it (the first 200 characters)."""
    return user_agent[:200] if user_agent else None


def new_binding() -> str:
    """A random pre-session value for the CSRF cookie of forms shown before sign-in."""
    return secrets.token_urlsafe(24)
