"""Connections: what a tenant's admin authorised, the tokens behind it, and revoking it.

Access tokens are verified on the same path as API keys: :meth:`ConnectionService.load_access_
token` is registered with the :class:`~keyplane.services.verify.Verifier` for the access-token
prefix and returns a :class:`~keyplane.core.policy.Snapshot` whose ``key_id`` is the connection
id, so usage, last-used and cache invalidation work per connection.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyplane.core import ids, tokens
from keyplane.core.apps import (
    App,
    ConnectedRepos,
    Connection,
    ConnectionView,
    CredentialPrefixes,
    OAuthToken,
    TokenKind,
    effective_scopes,
)
from keyplane.core.errors import NotFound
from keyplane.core.model import Page, Principal, Tenant
from keyplane.core.policy import Snapshot, parse_networks
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, principal_rights
from keyplane.services.context import Context

Repos = Callable[[UnitOfWork], ConnectedRepos]
CONNECTION_ID_PREFIX = "con_"


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
        self.ctx.changed(uow, "connection", c.id)
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
        self.ctx.changed(uow, "connection", c.id)

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
