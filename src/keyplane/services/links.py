"""Invitations and password resets: one-time links that expire.

A link's token is random (256 bits), shown once — mailed when a mail server is configured,
and always returned to the admin who made it so they can pass it on — and stored only as a
keyed digest. Opening it does nothing; using it (setting a password) marks it used in the same
transaction, so it works once. An invitation makes a new member with the role the admin chose;
a reset sets a new password and ends that member's sessions. Asking for a reset answers the
same whether or not the address has an account, and is rate-limited per address and per
client address.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from keyplane.core import ids
from keyplane.core.attempts import Limit
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, NotFound, RateLimited
from keyplane.core.model import Principal, PrincipalKind, Role, Tenant
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, CredentialKind
from keyplane.core.sign_in import LinkKind, OneTimeLink, SignInRepos
from keyplane.core.views import principal_view
from keyplane.services import validate as v
from keyplane.services.connections import Repos
from keyplane.services.context import Context
from keyplane.services.principals import _password, _role
from keyplane.services.throttle import FailureThrottle, client_key

TOKEN_BYTES = 32
INVITE_LIFETIME = timedelta(hours=72)
RESET_LIFETIME = timedelta(hours=1)
RESETS_PER_ADDRESS = Limit(3, 3600, "reset")
RESETS_PER_IP = Limit(20, 3600, "reset")
LINK_GONE = ("this link has expired or was already used; ask an admin of the workspace for a "
             "new one")


@dataclass(frozen=True)
class IssuedLink:
    """A link just made: its token appears here once, never again."""

    link: OneTimeLink
    url: str
    mailed: bool


@dataclass(frozen=True)
class OpenLink:
    """A usable link, with what its page shows."""

    link: OneTimeLink
    tenant: Tenant


class LinkService:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], SignInRepos],
                 sessions: Repos, throttle: FailureThrottle, *, base_url: str) -> None:
        self.ctx = ctx
        self.repos = repos
        self.sessions = sessions  # the web-session store: a reset ends the member's sessions
        self.throttle = throttle
        self.base_url = base_url.rstrip("/")

    def _repos(self, uow: UnitOfWork) -> SignInRepos:
        return self.repos(uow)

    def _new(self, kind: LinkKind, tenant_id: str, email: str, actor: str, lifetime: timedelta,
             **extra: Any) -> tuple[OneTimeLink, str]:
        raw = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.ctx.clock.now()
        link = OneTimeLink(id=ids.new_id("inv" if kind is LinkKind.INVITE else "rst"),
                           kind=kind, tenant_id=tenant_id, digest=self.ctx.hasher.digest(raw),
                           pepper_id=self.ctx.hasher.current.id, email=email, created_by=actor,
                           created_at=now, expires_at=now + lifetime, **extra)
        return link, raw

    def url(self, kind: LinkKind, raw: str) -> str:
        # the configured public URL, never the request's Host header (no link poisoning)
        return f"{self.base_url}/{'join' if kind is LinkKind.INVITE else 'reset'}/{raw}"

    # -- invitations ----------------------------------------------------------------------------

    def invite(self, caller: Caller, tenant_id: str | None, body: dict[str, Any]) -> IssuedLink:
        """Invite an email to the tenant with a role; an earlier pending invitation of the same
        address is withdrawn."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        v.only_fields(body, ("email", "role"))
        email = v.email(body.get("email"))
        role = _role(body.get("role") or "member")
        with self.ctx.uow() as uow:
            tenant = uow.tenants.get(tid)
            if tenant is None:
                raise NotFound("no such tenant")
            if uow.principals.get_by_email(tid, email) is not None:
                raise Conflict("a member with this email already exists", field="email")
            repos = self._repos(uow)
            now = self.ctx.clock.now()
            for old in repos.links.pending(tid, LinkKind.INVITE, now, email=email):
                old.withdrawn_at = now
                repos.links.update(old)
            link, raw = self._new(LinkKind.INVITE, tid, email, caller.actor, INVITE_LIFETIME,
                                  role=role.value)
            repos.links.add(link)
            self.ctx.audit(uow, caller, "invitation.created", link.id, tenant_id=tid,
                           email=email, role=role.value)
            url = self.url(LinkKind.INVITE, raw)
            mailed = self.ctx.mail_after_commit(
                uow, [email], f"You are invited to {tenant.name} on Keyplane",
                f"You are invited to join {tenant.name} on Keyplane as "
                f"{role.value.replace('_', ' ')}.\n\nOpen this link to choose your password:\n"
                f"{url}\n\nThe link works once and expires in "
                f"{int(INVITE_LIFETIME.total_seconds() // 3600)} hours. If you did not expect "
                "this, ignore this email.\n")
            uow.commit()
        return IssuedLink(link=link, url=url, mailed=mailed)

    def invitations(self, caller: Caller, tenant_id: str | None) -> list[OneTimeLink]:
        """The tenant's invitations that can still be used."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            return self._repos(uow).links.pending(tid, LinkKind.INVITE, self.ctx.clock.now())

    def withdraw(self, caller: Caller, tenant_id: str | None, link_id: str) -> None:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        with self.ctx.uow() as uow:
            repos = self._repos(uow)
            link = repos.links.get(tid, link_id)
            if link is None or link.kind is not LinkKind.INVITE:
                raise NotFound("no such invitation")
            if link.withdrawn_at is None and link.used_at is None:
                link.withdrawn_at = self.ctx.clock.now()
                repos.links.update(link)
                self.ctx.audit(uow, caller, "invitation.withdrawn", link.id, tenant_id=tid,
                               email=link.email)
            uow.commit()

    def accept(self, raw: Any, name: Any, password: Any, *, ip: str | None = None) -> Principal:
        """Use an invitation: a new member with the invited email and role, and this
        password. The link works once."""
        password_hash = _password(password)  # argon2 before the transaction, not inside it
        with self.ctx.uow() as uow:
            link, tenant = self._usable(uow, raw, LinkKind.INVITE)
            label = v.text(name or link.email, "name", max_len=v.MAX_NAME)
            if uow.tenants.get(tenant.id, for_update=True) is None:
                raise NotFound(LINK_GONE)
            if uow.principals.get_by_email(tenant.id, link.email) is not None:
                raise Conflict("a member with this email already exists; sign in instead",
                               field="email")
            now = self.ctx.clock.now()
            member = Principal(id=ids.new_id("usr"), tenant_id=tenant.id,
                               kind=PrincipalKind.MEMBER, name=label,
                               role=Role(link.role or "member"), created_at=now,
                               email=link.email, password_hash=password_hash)
            uow.principals.add(member)
            link.used_at = now
            self._repos(uow).links.update(link)
            actor = Caller(kind=CredentialKind.SESSION, scopes=frozenset(), tenant_id=tenant.id,
                           principal_id=member.id, ip=ip)
            self.ctx.audit(uow, actor, "invitation.accepted", link.id, tenant_id=tenant.id,
                           member_id=member.id)
            self.ctx.audit(uow, actor, "member.created", member.id, tenant_id=tenant.id,
                           role=member.role.value, invitation_id=link.id,
                           subject=principal_view(member))
            uow.commit()
        return member

    # -- password resets ------------------------------------------------------------------------

    def request_reset(self, email: Any, *, ip: str | None) -> str:
        """Check a "forgot password" request: the address, and the limits — counted per
        address whether or not it has an account, so the limit says nothing either. Returns
        the address for :meth:`send_reset`, which the caller runs after answering, so that
        the answer takes as long whether or not there is an account to mail."""
        address = v.email(email)
        for item, kind, ident in ((RESETS_PER_ADDRESS, "reset-address", address),
                                  (RESETS_PER_IP, "reset-ip", client_key(ip) if ip else "")):
            if ident and not self.throttle.count(item, kind, ident):
                wait = self.throttle.wait(item, kind, ident) or 60
                raise RateLimited("too many reset requests; try again later",
                                  retry_after=wait, limit=item.amount, remaining=0)
        return address

    def send_reset(self, address: str, *, ip: str | None) -> None:
        """Mail a reset link for every membership of this address that can sign in (nothing
        when there is none)."""
        with self.ctx.uow() as uow:
            members = [m for m in uow.principals.members_with_email(address) if m.can_sign_in]
            lines: list[str] = []
            for member in members:
                tenant = uow.tenants.get(member.tenant_id)
                if tenant is None or not tenant.enabled:
                    continue
                link, raw = self._reset_link(uow, member, f"self:{member.id}")
                lines.append(f"{tenant.name}:\n{self.url(LinkKind.RESET, raw)}\n")
                self.ctx.audit(uow, _anonymous(ip), "member.password_reset_requested",
                               member.id, tenant_id=member.tenant_id, link_id=link.id)
            if lines:
                self.ctx.mail_after_commit(
                    uow, [address], "Reset your Keyplane password",
                    "Someone (we hope you) asked to reset the password for this address.\n\n"
                    + "\n".join(lines) + "\nEach link works once and expires in "
                    f"{int(RESET_LIFETIME.total_seconds() // 60)} minutes. If you did not ask, "
                    "ignore this email: your password stays as it is.\n")
            uow.commit()

    def admin_reset(self, caller: Caller, tenant_id: str | None, member_id: str) -> IssuedLink:
        """An admin makes a reset link for a member of their tenant: shown to the admin and
        mailed to the member."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        with self.ctx.uow() as uow:
            member = uow.principals.get(tid, member_id)
            tenant = uow.tenants.get(tid)
            if member is None or member.kind is not PrincipalKind.MEMBER or tenant is None \
                    or not member.email:
                raise NotFound("no such member")
            link, raw = self._reset_link(uow, member, caller.actor)
            self.ctx.audit(uow, caller, "member.password_reset_link_created", member.id,
                           tenant_id=tid, link_id=link.id)
            url = self.url(LinkKind.RESET, raw)
            mailed = self.ctx.mail_after_commit(
                uow, [member.email], f"Set a new password for {tenant.name} on Keyplane",
                f"An admin of {tenant.name} made a password reset link for you:\n{url}\n\n"
                f"It works once and expires in "
                f"{int(RESET_LIFETIME.total_seconds() // 60)} minutes.\n")
            uow.commit()
        return IssuedLink(link=link, url=url, mailed=mailed)

    def _reset_link(self, uow: UnitOfWork, member: Principal,
                    actor: str) -> tuple[OneTimeLink, str]:
        assert member.email is not None
        repos = self._repos(uow)
        now = self.ctx.clock.now()
        for old in repos.links.pending(member.tenant_id, LinkKind.RESET, now,
                                       email=member.email):
            if old.principal_id == member.id:  # only the newest reset link works
                old.withdrawn_at = now
                repos.links.update(old)
        link, raw = self._new(LinkKind.RESET, member.tenant_id, member.email, actor,
                              RESET_LIFETIME, principal_id=member.id)
        repos.links.add(link)
        return link, raw

    def reset(self, raw: Any, password: Any, *, ip: str | None = None) -> Principal:
        """Use a reset link: the new password, and every session of the member ended."""
        password_hash = _password(password)  # argon2 before the transaction, not inside it
        with self.ctx.uow() as uow:
            link, tenant = self._usable(uow, raw, LinkKind.RESET)
            member = uow.principals.get(tenant.id, link.principal_id or "")
            if member is None or not member.enabled:
                raise NotFound(LINK_GONE)
            member.password_hash = password_hash
            uow.principals.update(member)
            ended = self.sessions(uow).sessions.revoke_for_principal(member.id,
                                                                     self.ctx.clock.now())
            link.used_at = self.ctx.clock.now()
            self._repos(uow).links.update(link)
            self.ctx.audit(uow, _anonymous(ip, member), "member.password_reset", member.id,
                           tenant_id=tenant.id, link_id=link.id, sessions_ended=ended)
            self.ctx.changed(uow, ChangeKind.PRINCIPAL, member.id)
            uow.commit()
        return member

    # -- opening a link -------------------------------------------------------------------------

    def open(self, raw: Any, kind: LinkKind) -> OpenLink:
        """The usable link behind ``raw``, or NotFound with plain words."""
        with self.ctx.uow(readonly=True) as uow:
            link, tenant = self._usable(uow, raw, kind, lock=False)
        return OpenLink(link=link, tenant=tenant)

    def _usable(self, uow: UnitOfWork, raw: Any, kind: LinkKind, *,
                lock: bool = True) -> tuple[OneTimeLink, Tenant]:
        if not isinstance(raw, str) or not 20 <= len(raw) <= 100:
            raise NotFound(LINK_GONE)
        repos = self._repos(uow)
        link = None
        for _pid, digest in self.ctx.hasher.candidates(raw):
            found = repos.links.find(digest, for_update=lock)
            if found is not None and hmac.compare_digest(found.digest, digest):
                link = found
                break
        if link is None or link.kind is not kind or not link.usable(self.ctx.clock.now()):
            raise NotFound(LINK_GONE)
        tenant = uow.tenants.get(link.tenant_id)
        if tenant is None or not tenant.enabled:
            raise NotFound(LINK_GONE)
        return link, tenant


def _anonymous(ip: str | None, member: Principal | None = None) -> Caller:
    return Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                  tenant_id=member.tenant_id if member else None,
                  principal_id=member.id if member else None, ip=ip)
