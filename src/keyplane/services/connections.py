"""Connections: what a tenant's admin authorised, the tokens behind it, and revoking it.

The steps of the OAuth flow that read or write records (a client, a code, a connection and its
tokens, the consent page's offer) are here too, each inside the :class:`~keyplane.services.
consent.OAuthStep` that :meth:`ConnectionService.transaction` opens and commits; Authlib, in
``keyplane.oauth.server``, does the protocol around them.

Access tokens are verified on the same path as API keys: :meth:`ConnectionService.load_access_
token` is registered with the :class:`~keyplane.services.verify.Verifier` for the access-token
prefix and returns a :class:`~keyplane.core.policy.Snapshot` whose ``key_id`` is the connection
id, so usage, last-used and cache invalidation work per connection.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from keyplane.core import ids, tokens
from keyplane.core.apps import (
    App,
    AppStatus,
    AuthorizationCode,
    ClientSecret,
    ConnectedRepos,
    Connection,
    ConnectionView,
    CredentialPrefixes,
    OAuthToken,
    TokenKind,
    effective_scopes,
)
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import NotFound
from keyplane.core.model import Page, Principal, Role, Tenant
from keyplane.core.policy import Snapshot, parse_networks
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, principal_rights
from keyplane.services.consent import (
    SUSPENDED,
    ClientSuspended,
    ConsentOffer,
    GrantRefused,
    Member,
    OAuthStep,
    ScopeOffer,
)
from keyplane.services.context import Context

log = logging.getLogger("keyplane.oauth")
Repos = Callable[[UnitOfWork], ConnectedRepos]
CONNECTION_ID_PREFIX = "con_"
T = TypeVar("T")


@dataclass(frozen=True)
class Lifetimes:
    access_token: timedelta
    code: timedelta
    refresh_family: timedelta


@dataclass(frozen=True)
class TokenState:
    """A stored token with everything needed to decide whether it is active now."""

    token: OAuthToken
    connection: Connection
    app: App
    tenant: Tenant | None
    principal: Principal | None
    scopes: frozenset[str]  # effective now

    def active(self, now: datetime) -> bool:
        return (
            self.token.revoked_at is None and self.connection.revoked_at is None
            and now < self.token.expires_at and now < self.connection.expires_at
            and (self.token.kind is TokenKind.ACCESS or self.token.rotated_at is None)
            and self.app.active and self.tenant is not None and self.tenant.enabled
            and self.principal is not None and self.principal.enabled
        )


class ConnectionService:
    def __init__(self, ctx: Context, repos: Repos, prefixes: CredentialPrefixes,
                 lifetimes: Lifetimes, *, tokens_require_tls: bool) -> None:
        self.ctx = ctx
        self.repos = repos
        self.prefixes = prefixes
        self.lifetimes = lifetimes
        self.tokens_require_tls = tokens_require_tls

    # -- the connected-apps list --------------------------------------------------------------

    def _view(self, uow: UnitOfWork, repos: ConnectedRepos, c: Connection) -> ConnectionView:
        app = repos.apps.get(c.app_id)
        assert app is not None  # the foreign key cascades
        who: dict[str, Any] = {"id": c.principal_id, "name": None, "email": None}
        if c.principal_id is not None:
            p = uow.principals.get(c.tenant_id, c.principal_id)
            if p is not None:
                who = {"id": p.id, "name": p.name, "email": p.email}
        return ConnectionView(connection=c, app=app, authorised_by=who)

    def get(self, caller: Caller, tenant_id: str | None, connection_id: str) -> ConnectionView:
        tid = caller.tenant_for(tenant_id)
        caller.require("keys:read")
        with self.ctx.uow(readonly=True) as uow:
            repos = self.repos(uow)
            c = repos.connections.get(connection_id)
            if c is None or c.tenant_id != tid:
                raise NotFound("no such connection")
            return self._view(uow, repos, c)

    def revoke(self, caller: Caller, tenant_id: str | None,
               connection_id: str) -> tuple[ConnectionView, int]:
        """Revoke every token of a connection at once; returns the connection and how many
        tokens stopped working."""
        tid = caller.tenant_for(tenant_id)
        caller.require("keys:write")
        with self.ctx.uow() as uow:
            repos = self.repos(uow)
            c = repos.connections.get(connection_id, for_update=True)
            if c is None or c.tenant_id != tid or c.revoked_at is not None:
                raise NotFound("no such connection")
            count = self.revoke_in(uow, repos, c, caller, reason="revoked by an administrator")
            view = self._view(uow, repos, c)
            uow.commit()
        return view, count

    def revoke_in(self, uow: UnitOfWork, repos: ConnectedRepos, c: Connection, caller: Caller,
                  *, reason: str, outcome: str = "success") -> int:
        """Revoke ``c`` inside the caller's transaction; caches drop its tokens after commit."""
        now = self.ctx.clock.now()
        c.revoked_at = now
        c.revoked_reason = reason[:200]
        repos.connections.update(c)
        count = repos.tokens.revoke_connection(c.id, now)
        self.ctx.audit(uow, caller, "connection.revoked", c.id, tenant_id=c.tenant_id,
                       outcome=outcome, reason=reason, app_id=c.app_id, tokens_revoked=count,
                       last_used_at=c.last_used_at)
        self.ctx.changed(uow, ChangeKind.CONNECTION, c.id)
        return count

    def revoke_token_in(self, uow: UnitOfWork, repos: ConnectedRepos, token: OAuthToken,
                        c: Connection, caller: Caller) -> None:
        """Revoke one access token (RFC 7009) inside the caller's transaction, audited as
        ``connection.token_revoked``; the connection and its other tokens stay."""
        token.revoked_at = self.ctx.clock.now()
        repos.tokens.update(token)
        self.ctx.audit(uow, caller, "connection.token_revoked", token.id, tenant_id=c.tenant_id,
                       connection_id=c.id, app_id=c.app_id, token_kind=token.kind.value,
                       subject={"id": token.id, "object": "oauth_token", "connection_id": c.id,
                                "app_id": c.app_id, "kind": token.kind.value,
                                "revoked_at": token.revoked_at.isoformat()},
                       before={"id": token.id, "object": "oauth_token", "connection_id": c.id,
                               "app_id": c.app_id, "kind": token.kind.value,
                               "revoked_at": None})
        self.ctx.changed(uow, ChangeKind.CONNECTION, c.id)

    # -- tokens ---------------------------------------------------------------------------------

    def new_token(self, kind: TokenKind, connection: Connection, scopes: list[str], now: datetime,
                  parent_id: str | None = None) -> tuple[str, OAuthToken]:
        if kind is TokenKind.ACCESS:
            prefix = self.prefixes.access_token
            expires = min(now + self.lifetimes.access_token, connection.expires_at)
        else:
            prefix = self.prefixes.refresh_token
            expires = connection.expires_at  # absolute: rotation never extends it
        raw = tokens.generate(prefix)
        return raw, OAuthToken(
            id=ids.new_id("tok"), connection_id=connection.id, kind=kind,
            digest=self.ctx.hasher.digest(raw), pepper_id=self.ctx.hasher.current.id,
            scopes=list(scopes), created_at=now, expires_at=expires, parent_id=parent_id)

    def find_token(self, uow: UnitOfWork, repos: ConnectedRepos, raw: str, *,
                   for_update: bool = False) -> OAuthToken | None:
        """The stored access or refresh token for ``raw`` (any configured pepper), or None."""
        parsed = tokens.parse(raw, (self.prefixes.access_token, self.prefixes.refresh_token))
        if parsed is None:
            return None
        for _pid, digest in self.ctx.hasher.candidates(raw):
            found = repos.tokens.find(digest, for_update=for_update)
            if found is not None and hmac.compare_digest(found.digest, digest):
                return found
        return None

    def state(self, uow: UnitOfWork, repos: ConnectedRepos, token: OAuthToken) -> TokenState | None:
        c = repos.connections.get(token.connection_id)
        if c is None:
            return None
        app = repos.apps.get(c.app_id)
        if app is None:
            return None
        tenant = uow.tenants.get(c.tenant_id)
        principal = (uow.principals.get(c.tenant_id, c.principal_id)
                     if c.principal_id is not None else None)
        rights: frozenset[str] = frozenset()
        if principal is not None:
            rights = principal_rights(principal, uow.groups.get_many(principal.group_ids),
                                      self.ctx.catalogue(),
                                      tenant.policy if tenant is not None else None)
        scopes = effective_scopes(token.scopes, c.scopes, rights)
        return TokenState(token=token, connection=c, app=app, tenant=tenant,
                          principal=principal, scopes=scopes)

    def load_access_token(self, uow: UnitOfWork, digest: str) -> Snapshot | None:
        """The verifier's loader for access tokens (see :meth:`Verifier.register`)."""
        repos = self.repos(uow)
        token = repos.tokens.find(digest)
        if token is None or token.kind is not TokenKind.ACCESS or not hmac.compare_digest(
            token.digest, digest
        ):
            return None
        st = self.state(uow, repos, token)
        if st is None or st.tenant is None:
            return None
        c = st.connection
        return Snapshot(
            key_id=c.id, tenant_id=c.tenant_id, owner_id=c.principal_id, name=st.app.name,
            scopes=st.scopes, expires_at=min(token.expires_at, c.expires_at),
            revoked=token.revoked_at is not None or c.revoked_at is not None,
            enabled=st.app.active,
            owner_enabled=st.principal is not None and st.principal.enabled,
            tenant_enabled=st.tenant.enabled,
            # the tenant's TLS policy, as its keys follow it (and always behind an https issuer)
            require_tls=self.tokens_require_tls or st.tenant.policy.require_tls_default,
            tenant_networks=parse_networks(st.tenant.policy.allowed_ips),
            kind="access_token", client_id=st.app.client_id,
            meta={"grant_id": c.id, "app_id": st.app.id, "token_id": token.id},
        )

    # -- the OAuth flow's steps (Authlib calls them through keyplane.oauth.server) ---------------

    def transaction(self, action: Callable[[OAuthStep], T], *, readonly: bool = False,
                    ip: str | None = None, request_id: str | None = None,
                    user_agent: str | None = None, session_id: str | None = None) -> T:
        """Run one OAuth request's steps in one unit of work and commit it once the protocol
        has answered. A request that fails commits too: burning a replayed code's tokens or a
        reused refresh token's connection must stick though the client gets an error."""
        with self.ctx.uow(readonly=readonly) as uow:
            step = OAuthStep(uow, self.repos(uow), ip=ip, request_id=request_id,
                             user_agent=user_agent[:200] if user_agent else None,
                             session_id=session_id)
            result = action(step)
            if not readonly:
                uow.commit()
        return result

    def client(self, step: OAuthStep,
               client_id: object) -> tuple[App, list[ClientSecret]] | None:
        """An approved app and its live secrets. Pending, rejected and suspended apps are not
        clients (no flow, no token); a suspended one is told so plainly."""
        app = step.repos.apps.by_client_id(client_id) if isinstance(client_id, str) else None
        if app is not None and app.status is AppStatus.SUSPENDED:
            raise ClientSuspended(SUSPENDED)
        if app is None or not app.active:
            return None
        return app, step.repos.apps.secrets(app.id)

    def member(self, step: OAuthStep, tenant_id: str, principal_id: str) -> Member | None:
        principal = step.uow.principals.get(tenant_id, principal_id)
        tenant = step.uow.tenants.get(tenant_id)
        if principal is None or tenant is None or not tenant.enabled or not principal.enabled:
            return None
        return Member(principal=principal, tenant=tenant)

    def consent_offer(self, principal: Principal, requested: Sequence[str]) -> ConsentOffer:
        """What the consent page offers this admin: each requested scope, and whether they
        hold it (only what they hold may be granted)."""
        catalogue = self.ctx.catalogue()
        with self.ctx.uow(readonly=True) as uow:
            rights = principal_rights(principal, uow.groups.get_many(principal.group_ids),
                                      catalogue)
        return ConsentOffer(
            scopes=[ScopeOffer(s, catalogue.describe(s), s in rights) for s in requested],
            access_minutes=int(self.lifetimes.access_token.total_seconds()) // 60,
            grant_days=self.lifetimes.refresh_family.days)

    def denied(self, step: OAuthStep, member: Member, app: App, scopes: list[str]) -> None:
        """The admin said no: recorded, nothing granted."""
        self.ctx.audit(step.uow, step.member_caller(member), "connection.denied", app.id,
                       tenant_id=member.tenant.id, outcome="failure", scopes=scopes)

    def save_code(self, step: OAuthStep, raw: str, app: App, member: Member,
                  scopes: list[str], redirect_uri: str, code_challenge: str) -> None:
        """The admin allowed the app: a single-use code (S256 PKCE) for these scopes."""
        now = self.ctx.clock.now()
        step.repos.codes.add(AuthorizationCode(
            id=ids.new_id("acd"), digest=self.ctx.hasher.digest(raw),
            pepper_id=self.ctx.hasher.current.id, app_id=app.id, tenant_id=member.tenant.id,
            principal_id=member.principal.id, scopes=scopes, redirect_uri=redirect_uri,
            code_challenge=code_challenge, code_challenge_method="S256", created_at=now,
            expires_at=now + self.lifetimes.code))
        self.ctx.audit(step.uow, step.member_caller(member), "connection.authorized", app.id,
                       tenant_id=member.tenant.id, app_name=app.name, scopes=scopes,
                       client_id=app.client_id)

    def redeem_code(self, step: OAuthStep, raw: str, app: App) -> AuthorizationCode | None:
        """The live code ``raw`` of ``app``, locked, or None. A code used before is a replay:
        whoever holds it, the tokens issued with it are revoked (``GrantRefused``)."""
        if tokens.parse(raw, (self.prefixes.code,)) is None:
            return None
        record = None
        for _pid, digest in self.ctx.hasher.candidates(raw):
            record = step.repos.codes.find(digest, for_update=True)
            if record is not None:
                break
        if record is None or record.app_id != app.id:
            return None
        if record.used_at is not None:
            if record.connection_id is not None:
                self.revoke_for_reuse(step, record.connection_id, "authorization code reused")
            raise GrantRefused("The code was already used; the tokens issued with it are "
                               "revoked.")
        if self.ctx.clock.now() >= record.expires_at:
            return None
        return record

    def code_used(self, step: OAuthStep, record: AuthorizationCode,
                  connection: Connection | None) -> None:
        record.used_at = self.ctx.clock.now()
        record.connection_id = connection.id if connection is not None else None
        step.repos.codes.update(record)

    def code_member(self, step: OAuthStep, record: AuthorizationCode) -> Member:
        """Who authorised the code, if they still may: an enabled admin of an enabled tenant."""
        member = self.member(step, record.tenant_id, record.principal_id)
        if member is None or member.principal.role is not Role.ADMIN:
            raise GrantRefused("The administrator who authorised this code can no longer do "
                               "so.")
        return member

    def refresh_state(self, step: OAuthStep, raw: str, app: App) -> TokenState | None:
        """The live refresh token ``raw`` of ``app``, locked, or None. A rotated one used
        again is a replay: its connection is revoked (``GrantRefused``)."""
        state = self.token_state(step, raw, for_update=True)
        if state is None or state.token.kind is not TokenKind.REFRESH \
                or state.app.client_id != app.client_id:
            return None
        if state.token.rotated_at is not None:
            if state.connection.revoked_at is None:
                self.revoke_for_reuse(step, state.connection.id, "refresh token reused")
            raise GrantRefused("The refresh token was already used; the connection is "
                               "revoked.")
        if not state.active(self.ctx.clock.now()):
            return None
        return state

    @staticmethod
    def refresh_member(state: TokenState) -> Member:
        if state.principal is None or state.tenant is None:
            raise GrantRefused("The administrator who authorised this connection is gone.")
        return Member(principal=state.principal, tenant=state.tenant)

    def rotated(self, step: OAuthStep, state: TokenState) -> None:
        state.token.rotated_at = self.ctx.clock.now()
        step.repos.tokens.update(state.token)

    def token_state(self, step: OAuthStep, raw: str, *,
                    for_update: bool = False) -> TokenState | None:
        token = self.find_token(step.uow, step.repos, raw, for_update=for_update)
        return self.state(step.uow, step.repos, token) if token is not None else None

    def connect(self, step: OAuthStep, record: AuthorizationCode, app: App) -> Connection:
        """The connection a redeemed code makes. The same admin authorising the same app
        again updates the one connection (its new consent, a fresh lifetime) and ends its old
        tokens now."""
        now = self.ctx.clock.now()
        repos, actor = step.repos, step.app_caller(app)
        found = repos.connections.active_for(record.tenant_id, record.app_id,
                                             record.principal_id, now)
        if found is not None:
            found.scopes = list(record.scopes)
            found.expires_at = now + self.lifetimes.refresh_family
            repos.connections.update(found)
            ended = repos.tokens.revoke_connection(found.id, now)
            self.ctx.audit(step.uow, actor, "connection.reauthorised", found.id,
                           tenant_id=found.tenant_id, app_id=found.app_id,
                           authorised_by=found.principal_id, scopes=found.scopes,
                           tokens_revoked=ended)
            self.ctx.changed(step.uow, ChangeKind.CONNECTION, found.id)
            return found
        connection = Connection(
            id=ids.new_id("con"), tenant_id=record.tenant_id, app_id=record.app_id,
            principal_id=record.principal_id, scopes=list(record.scopes), created_at=now,
            expires_at=now + self.lifetimes.refresh_family)
        repos.connections.add(connection)
        self.ctx.audit(step.uow, actor, "connection.created", connection.id,
                       tenant_id=connection.tenant_id, app_id=connection.app_id,
                       authorised_by=connection.principal_id, scopes=connection.scopes)
        return connection

    def issue(self, step: OAuthStep, connection: Connection, access_scopes: list[str],
              refresh_scopes: list[str] | None, parent_id: str | None
              ) -> tuple[str, int, str | None]:
        """New tokens of a connection: (access token, its lifetime in seconds, refresh token
        when ``refresh_scopes`` is given)."""
        now = self.ctx.clock.now()
        raw, access = self.new_token(TokenKind.ACCESS, connection, access_scopes, now, parent_id)
        step.repos.tokens.add(access)
        refresh_raw = None
        if refresh_scopes is not None:
            refresh_raw, refresh = self.new_token(TokenKind.REFRESH, connection, refresh_scopes,
                                                  now, parent_id)
            step.repos.tokens.add(refresh)
        return raw, max(1, int((access.expires_at - now).total_seconds())), refresh_raw

    def revoke_by_app(self, step: OAuthStep, state: TokenState, app: App) -> None:
        """The app revokes one of its tokens (RFC 7009), recorded as the app's act: a refresh
        token ends the grant and its access tokens with it (§2.1); an access token, itself."""
        actor = step.app_caller(app)
        if state.token.kind is TokenKind.REFRESH:
            c = step.repos.connections.get(state.connection.id, for_update=True)
            if c is not None and c.revoked_at is None:
                self.revoke_in(step.uow, step.repos, c, actor,
                               reason="refresh token revoked by the app")
            return
        if state.token.revoked_at is None:
            self.revoke_token_in(step.uow, step.repos, state.token, state.connection, actor)

    def revoke_for_reuse(self, step: OAuthStep, connection_id: str, reason: str) -> None:
        c = step.repos.connections.get(connection_id, for_update=True)
        if c is None or c.revoked_at is not None:
            return
        log.warning("revoking connection %s: %s", connection_id, reason)
        self.revoke_in(step.uow, step.repos, c, step.system_caller(), reason=reason,
                       outcome="failure")

    # -- usage ----------------------------------------------------------------------------------

    def owner_of(self, uow: UnitOfWork, connection_id: str) -> tuple[str | None] | None:
        """``(tenant_id,)`` of a live connection, for usage reports (``POST /v1/usage``)."""
        c = self.repos(uow).connections.get(connection_id)
        if c is None or c.revoked_at is not None:
            return None
        return (c.tenant_id,)

    def record_usage(self, uow: UnitOfWork, last_used: dict[str, datetime],
                     counts: Counter[tuple[str, str]]) -> None:
        """Flush sink of the usage recorder: last use and request counts per connection."""
        used = {k: at for k, at in last_used.items() if k.startswith(CONNECTION_ID_PREFIX)}
        per: dict[str, tuple[int, int]] = {}
        for (ref, outcome), n in counts.items():
            if not ref.startswith(CONNECTION_ID_PREFIX):
                continue
            ok, denied = per.get(ref, (0, 0))
            per[ref] = (ok + n, denied) if outcome == "VALID" else (ok, denied + n)
        if used or per:
            self.repos(uow).connections.record_usage(used, per)

    # last in the class: defining `list` shadows the builtin in annotations below it
    def list(self, caller: Caller, tenant_id: str | None, *, limit: int = 50,
             cursor: str | None = None) -> Page[ConnectionView]:
        tid = caller.tenant_for(tenant_id)
        caller.require("keys:read")
        with self.ctx.uow(readonly=True) as uow:
            repos = self.repos(uow)
            page = repos.connections.page(tid, active_at=self.ctx.clock.now(), limit=limit,
                                          cursor=cursor)
            return Page(items=[self._view(uow, repos, c) for c in page.items],
                        next_cursor=page.next_cursor)
