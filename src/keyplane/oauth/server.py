"""Keyplane's authorization server on Authlib's core: the authorization-code grant with PKCE
(S256 only, required for every client), rotating refresh tokens with reuse detection, RFC 7009
revocation, RFC 7662 introspection and RFC 9207's ``iss`` in authorization responses.

One :class:`AuthorizationServer` is built per HTTP request around that request's unit of work,
so every hook Authlib calls (query_client, save_authorization_code, save_token, …) reads and
writes inside one transaction; :func:`run` commits it once Authlib has answered. Failed
requests commit too: burning a replayed code's tokens or a reused refresh token's connection
must stick even though the client gets an error.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer as AuthlibServer,
)
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    TokenMixin,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter

from keyplane.core import ids, tokens
from keyplane.core.apps import (
    App,
    AppStatus,
    AuthorizationCode,
    ClientSecret,
    ConnectedRepos,
    Connection,
    TokenKind,
    redirect_matches,
    scope_list,
)
from keyplane.core.changes import ChangeKind
from keyplane.core.model import Principal, Role, Tenant
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, CredentialKind
from keyplane.oauth.adapter import Result
from keyplane.oauth.metadata import AUTH_METHODS, GRANT_TYPES
from keyplane.oauth.wiring import ConnectedApps
from keyplane.services.connections import TokenState
from keyplane.services.context import Context

log = logging.getLogger("keyplane.oauth")



# -- Authlib's models over Keyplane's records ---------------------------------------------------

class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, app: App, secrets: list[ClientSecret], env: ConnectedApps) -> None:
        self.app = app
        self.secrets = secrets
        self.env = env

    @property
    def client_id(self) -> str:
        assert self.app.client_id is not None
        return self.app.client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is required: no guessing

    def get_allowed_scope(self, scope: str | None) -> str | None:
        requested = scope_list(scope) or list(self.app.scopes)
        if any(s not in self.app.scopes for s in requested):
            return None  # outside the app's registration: invalid_scope
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_matches(self.app.redirect_uris, redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self.env.apps.secret_matches(self.secrets, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS  # confidential clients only

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass
class Member:
    """The resource owner: a signed-in tenant admin."""

    principal: Principal
    tenant: Tenant

    def get_user_id(self) -> str:
        return self.principal.id


class Code:
    def __init__(self, record: AuthorizationCode) -> None:
        self.record = record
        self.code_challenge = record.code_challenge
        self.code_challenge_method = record.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return " ".join(self.record.scopes)


class Token(TokenMixin):  # type: ignore[misc]
    def __init__(self, state: TokenState, now: datetime) -> None:
        self.state = state
        self.now = now

    def check_client(self, client: Client) -> bool:
        return self.state.app.client_id == client.client_id

    def get_scope(self) -> str:
        return " ".join(self.state.token.scopes)

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - self.now).total_seconds()))

    @property
    def expires_at(self) -> datetime:
        return min(self.state.token.expires_at, self.state.connection.expires_at)

    def is_expired(self) -> bool:
        return self.now >= self.expires_at

    def is_revoked(self) -> bool:
        return not self.state.active(self.now) and not self.is_expired()


# -- grants and extensions ----------------------------------------------------------------------

class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE for every client, S256 only: a missing challenge, a missing method (which would
    default to ``plain``) or ``plain`` itself is refused at the authorization endpoint."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"  # never used: the method is required up front
    CODE_CHALLENGE_METHODS = {
        "S256": lambda verifier, challenge: hmac.compare_digest(
            create_s256_code_challenge(verifier), challenge),
    }

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and "
                                      "code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256; plain is refused")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: AuthorizationServer

    def generate_authorization_code(self) -> str:
        return tokens.generate(self.server.env.prefixes.code)

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        srv = self.server
        member: Member = request.user
        client: Client = request.client
        granted = getattr(request, "granted_scopes", None) or scope_list(request.scope)
        now = srv.ctx.clock.now()
        data = request.payload.data
        record = AuthorizationCode(
            id=ids.new_id("acd"), digest=srv.ctx.hasher.digest(code),
            pepper_id=srv.ctx.hasher.current.id, app_id=client.app.id,
            tenant_id=member.tenant.id, principal_id=member.principal.id, scopes=granted,
            redirect_uri=request.payload.redirect_uri,
            code_challenge=data["code_challenge"], code_challenge_method="S256",
            created_at=now, expires_at=now + srv.env.connections.lifetimes.code)
        srv.repos.codes.add(record)
        srv.ctx.audit(srv.uow, srv.member_caller(member), "connection.authorized", client.app.id,
                      tenant_id=member.tenant.id, app_name=client.app.name, scopes=granted,
                      client_id=client.client_id)

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        srv = self.server
        if tokens.parse(code, (srv.env.prefixes.code,)) is None:
            return None
        record = None
        for _pid, digest in srv.ctx.hasher.candidates(code):
            record = srv.repos.codes.find(digest, for_update=True)
            if record is not None:
                break
        if record is None or record.app_id != client.app.id:
            return None
        if record.used_at is not None:
            # replay: whoever holds this code, the tokens issued with it are revoked
            if record.connection_id is not None:
                srv.revoke_connection(record.connection_id, "authorization code reused")
            raise InvalidGrantError("The code was already used; the tokens issued with it "
                                    "are revoked.")
        if srv.ctx.clock.now() >= record.expires_at:
            return None
        return Code(record)

    def delete_authorization_code(self, authorization_code: Code) -> None:
        record = authorization_code.record
        record.used_at = self.server.ctx.clock.now()
        connection = getattr(self.request, "connection", None)
        record.connection_id = connection.id if connection is not None else None
        self.server.repos.codes.update(record)

    def authenticate_user(self, authorization_code: Code) -> Member | None:
        record = authorization_code.record
        member = self.server.member(record.tenant_id, record.principal_id)
        if member is None or member.principal.role is not Role.ADMIN:
            raise InvalidGrantError("The administrator who authorised this code can no "
                                    "longer do so.")
        return member


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotated on every use
    server: AuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        srv = self.server
        state = srv.find(refresh_token, for_update=True)
        if state is None or state.token.kind is not TokenKind.REFRESH:
            return None
        client: Client = self.request.client
        if state.app.client_id != client.client_id:
            return None
        if state.token.rotated_at is not None:
            if state.connection.revoked_at is None:
                srv.revoke_connection(state.connection.id, "refresh token reused")
            raise InvalidGrantError("The refresh token was already used; the connection is "
                                    "revoked.")
        if not state.active(srv.ctx.clock.now()):
            return None
        return Token(state, srv.ctx.clock.now())

    def authenticate_user(self, refresh_token: Token) -> Member:
        st = refresh_token.state
        if st.principal is None or st.tenant is None:
            raise InvalidGrantError("The administrator who authorised this connection is gone.")
        return Member(principal=st.principal, tenant=st.tenant)

    def revoke_old_credential(self, refresh_token: Token) -> None:
        token = refresh_token.state.token
        token.rotated_at = self.server.ctx.clock.now()
        self.server.repos.tokens.update(token)


class _TokenEndpointMixin:
    CLIENT_AUTH_METHODS = AUTH_METHODS
    server: AuthorizationServer

    def check_params(self, request: OAuth2Request, client: Client) -> None:
        if not request.form.get("token"):
            raise InvalidRequestError("Missing 'token' in request.")
        hint = request.form.get("token_type_hint")
        if hint and hint not in ("access_token", "refresh_token"):
            raise OAuth2Error(error="unsupported_token_type", status_code=400,
                              description="token_type_hint must be access_token or "
                              "refresh_token")

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        # the hint is only a hint (RFC 7009 §2.1): both kinds are searched
        state = self.server.find(token_string)
        return Token(state, self.server.ctx.clock.now()) if state is not None else None


class Revocation(_TokenEndpointMixin, RevocationEndpoint):  # type: ignore[misc]
    def revoke_token(self, token: Token, request: OAuth2Request) -> None:
        """The app revokes one of its tokens; the audit log records it as the app's act."""
        srv = self.server
        st = token.state
        app = srv.app_caller(request.client)
        if st.token.kind is TokenKind.REFRESH:
            # the grant ends: its access tokens go too (RFC 7009 §2.1)
            c = srv.repos.connections.get(st.connection.id, for_update=True)
            if c is not None and c.revoked_at is None:
                srv.env.connections.revoke_in(srv.uow, srv.repos, c, app,
                                              reason="refresh token revoked by the app")
            return
        if st.token.revoked_at is None:
            srv.env.connections.revoke_token_in(srv.uow, srv.repos, st.token, st.connection,
                                                app)


class Introspection(_TokenEndpointMixin, IntrospectionEndpoint):  # type: ignore[misc]
    def check_permission(self, token: Token, client: Client, request: OAuth2Request) -> bool:
        return bool(token.check_client(client))  # a client sees only its own tokens

    def introspect_token(self, token: Token) -> dict[str, Any]:
        st = token.state
        issuer = self.server.env.issuer
        return {
            "active": True, "client_id": st.app.client_id,
            "token_type": "Bearer" if st.token.kind is TokenKind.ACCESS else "refresh_token",
            "scope": " ".join(sorted(st.scopes)), "sub": st.connection.principal_id,
            "aud": issuer, "iss": issuer, "exp": int(token.expires_at.timestamp()),
            "iat": int(st.token.created_at.timestamp()), "tenant_id": st.connection.tenant_id,
            "connection_id": st.connection.id,
        }


class Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


@dataclass(frozen=True)
class AppActor(Caller):
    """A partner app acting at the token endpoint, as it appears in the audit log."""

    @property
    def actor(self) -> str:
        return f"app:{self.key_id}"


# -- the server ---------------------------------------------------------------------------------

class AuthorizationServer(AuthlibServer):  # type: ignore[misc]
    def __init__(self, env: ConnectedApps, ctx: Context, uow: UnitOfWork,
                 repos: ConnectedRepos, ip: str | None = None,
                 request_id: str | None = None, *, user_agent: str | None = None,
                 session_id: str | None = None) -> None:
        super().__init__()
        self.env, self.ctx, self.uow, self.repos = env, ctx, uow, repos
        self.ip, self.request_id = ip, request_id
        # what the audit log records of the client: its User-Agent, the admin's session
        self.user_agent = user_agent[:200] if user_agent else None
        self.session_id = session_id
        self._clients: dict[str, Client | None] = {}
        self.register_token_generator("default", self._generate)
        self.register_grant(CodeGrant, [S256Only(required=True)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_extension(Issuer(env.issuer))

    # Authlib hooks

    def query_client(self, client_id: str) -> Client | None:
        if client_id not in self._clients:
            app = self.repos.apps.by_client_id(client_id) if isinstance(client_id, str) else None
            if app is not None and app.status is AppStatus.SUSPENDED:  # say so, plainly
                raise InvalidClientError(
                    description="This app is suspended by the Keyplane operator: it can "
                    "neither start a sign-in nor get tokens until it is reinstated.",
                    status_code=401)
            # pending, rejected and suspended apps are not clients: no flow, no token
            self._clients[client_id] = (
                Client(app, self.repos.apps.secrets(app.id), self.env)
                if app is not None and app.active else None)
        return self._clients[client_id]

    def _generate(self, grant_type: str, client: Client, user: Member | None = None,
                  scope: str | None = None, expires_in: int | None = None,
                  include_refresh_token: bool = True) -> dict[str, Any]:
        p = self.env.prefixes
        token: dict[str, Any] = {
            "token_type": "Bearer", "access_token": tokens.generate(p.access_token),
            "expires_in": int(self.env.connections.lifetimes.access_token.total_seconds()),
        }
        if scope:
            token["scope"] = scope
        if include_refresh_token:
            token["refresh_token"] = tokens.generate(p.refresh_token)
        return token

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        now = self.ctx.clock.now()
        svc = self.env.connections
        if request.payload.grant_type == "authorization_code":
            record: AuthorizationCode = request.authorization_code.record
            found = self.repos.connections.active_for(
                record.tenant_id, record.app_id, record.principal_id, now) \
                if record.principal_id else None
            if found is not None:
                # the same admin authorised the same app again: the one connection is updated
                # (its new consent, a fresh lifetime); its old tokens end now, the new ones
                # below are the app's at once
                connection = found
                connection.scopes = list(record.scopes)
                connection.expires_at = now + svc.lifetimes.refresh_family
                self.repos.connections.update(connection)
                ended = self.repos.tokens.revoke_connection(connection.id, now)
                self.ctx.audit(self.uow, self.app_caller(request.client),
                               "connection.reauthorised", connection.id,
                               tenant_id=connection.tenant_id, app_id=connection.app_id,
                               authorised_by=connection.principal_id,
                               scopes=connection.scopes, tokens_revoked=ended)
                self.ctx.changed(self.uow, ChangeKind.CONNECTION, connection.id)
            else:
                connection = Connection(
                    id=ids.new_id("con"), tenant_id=record.tenant_id, app_id=record.app_id,
                    principal_id=record.principal_id, scopes=list(record.scopes),
                    created_at=now, expires_at=now + svc.lifetimes.refresh_family)
                self.repos.connections.add(connection)
                self.ctx.audit(self.uow, self.app_caller(request.client),
                               "connection.created", connection.id,
                               tenant_id=connection.tenant_id, app_id=connection.app_id,
                               authorised_by=connection.principal_id, scopes=connection.scopes)
            refresh_scopes, parent = list(record.scopes), None
        else:
            old: Token = request.refresh_token
            connection = old.state.connection
            refresh_scopes, parent = list(old.state.token.scopes), old.state.token.id
        request.connection = connection
        access_scopes = scope_list(token.get("scope")) or list(connection.scopes)
        raw, access = svc.new_token(TokenKind.ACCESS, connection, access_scopes, now, parent)
        token["access_token"] = raw
        token["expires_in"] = max(1, int((access.expires_at - now).total_seconds()))
        self.repos.tokens.add(access)
        if "refresh_token" in token:
            raw, refresh = svc.new_token(TokenKind.REFRESH, connection, refresh_scopes, now,
                                         parent)
            token["refresh_token"] = raw
            self.repos.tokens.add(refresh)

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # the adapter already built it

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Result:
        return Result(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    # Keyplane helpers for the grants

    def member(self, tenant_id: str, principal_id: str) -> Member | None:
        principal = self.uow.principals.get(tenant_id, principal_id)
        tenant = self.uow.tenants.get(tenant_id)
        if principal is None or tenant is None or not tenant.enabled or not principal.enabled:
            return None
        return Member(principal=principal, tenant=tenant)

    def find(self, raw: str, *, for_update: bool = False) -> TokenState | None:
        svc = self.env.connections
        token = svc.find_token(self.uow, self.repos, raw, for_update=for_update)
        return svc.state(self.uow, self.repos, token) if token is not None else None

    def revoke_connection(self, connection_id: str, reason: str) -> None:
        c = self.repos.connections.get(connection_id, for_update=True)
        if c is None or c.revoked_at is not None:
            return
        log.warning("revoking connection %s: %s", connection_id, reason)
        self.env.connections.revoke_in(self.uow, self.repos, c, self.system_caller(),
                                       reason=reason, outcome="failure")

    def member_caller(self, member: Member) -> Caller:
        return Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                      tenant_id=member.tenant.id, principal_id=member.principal.id,
                      ip=self.ip, request_id=self.request_id, user_agent=self.user_agent,
                      session_id=self.session_id)

    def app_caller(self, client: Client) -> Caller:
        return AppActor(kind=CredentialKind.ACCESS_TOKEN, scopes=frozenset(),
                        key_id=client.app.id, ip=self.ip, request_id=self.request_id,
                        user_agent=self.user_agent, via=f"oauth_client:{client.client_id}")

    def system_caller(self) -> Caller:
        return Caller(kind=CredentialKind.OPERATOR_KEY, scopes=frozenset(), ip=self.ip,
                      request_id=self.request_id, user_agent=self.user_agent)


def run(env: ConnectedApps, ctx: Context, repos_for: Callable[[UnitOfWork], ConnectedRepos],
        action: Callable[[AuthorizationServer], Result], *, ip: str | None,
        request_id: str | None, user_agent: str | None = None,
        session_id: str | None = None) -> Result:
    """Run one Authlib call inside one transaction and commit it (see the module docstring)."""
    with ctx.uow() as uow:
        server = AuthorizationServer(env, ctx, uow, repos_for(uow), ip, request_id,
                                     user_agent=user_agent, session_id=session_id)
        result = action(server)
        uow.commit()
    return result
