"""Keyplane's authorization server on Authlib's core: the authorization-code grant with PKCE
(S256 only, required for every client), rotating refresh tokens with reuse detection, RFC 7009
revocation, RFC 7662 introspection and RFC 9207's ``iss`` in authorization responses.

This module is the adapter: Authlib's models and hooks over Keyplane's records. Every hook
that reads or writes one (query_client, save_authorization_code, save_token, …) calls a step
of :class:`~keyplane.services.connections.ConnectionService`, which holds the rules (replays,
re-authorisation, who may still grant) and owns the transaction: :func:`run` builds one
:class:`AuthorizationServer` per HTTP request inside ``ConnectionService.transaction``, which
commits once Authlib has answered (failed requests too: burning a replayed code's tokens or a
reused refresh token's connection must stick even though the client gets an error).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

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

from keyplane.core import tokens
from keyplane.core.apps import (
    App,
    AuthorizationCode,
    ClientSecret,
    TokenKind,
    redirect_matches,
    scope_list,
)
from keyplane.oauth.adapter import Result
from keyplane.oauth.metadata import AUTH_METHODS, GRANT_TYPES
from keyplane.oauth.wiring import ConnectedApps
from keyplane.services.connections import TokenState
from keyplane.services.consent import ClientSuspended, GrantRefused, Member, OAuthStep

T = TypeVar("T")


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
        client: Client = request.client
        granted = getattr(request, "granted_scopes", None) or scope_list(request.scope)
        self.server.steps.save_code(self.server.step, code, client.app, request.user, granted,
                                    request.payload.redirect_uri,
                                    request.payload.data["code_challenge"])

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        with refused_grant():
            record = self.server.steps.redeem_code(self.server.step, code, client.app)
        return Code(record) if record is not None else None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.steps.code_used(self.server.step, authorization_code.record,
                                    getattr(self.request, "connection", None))

    def authenticate_user(self, authorization_code: Code) -> Member:
        with refused_grant():
            return self.server.steps.code_member(self.server.step, authorization_code.record)


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotated on every use
    server: AuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        client: Client = self.request.client
        with refused_grant():
            state = self.server.steps.refresh_state(self.server.step, refresh_token, client.app)
        return Token(state, self.server.now()) if state is not None else None

    def authenticate_user(self, refresh_token: Token) -> Member:
        with refused_grant():
            return self.server.steps.refresh_member(refresh_token.state)

    def revoke_old_credential(self, refresh_token: Token) -> None:
        self.server.steps.rotated(self.server.step, refresh_token.state)


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
        state = self.server.steps.token_state(self.server.step, token_string)
        return Token(state, self.server.now()) if state is not None else None


class Revocation(_TokenEndpointMixin, RevocationEndpoint):  # type: ignore[misc]
    def revoke_token(self, token: Token, request: OAuth2Request) -> None:
        self.server.steps.revoke_by_app(self.server.step, token.state, request.client.app)


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


@contextmanager
def refused_grant() -> Iterator[None]:
    """A step's ``GrantRefused`` as Authlib's ``invalid_grant``."""
    try:
        yield
    except GrantRefused as exc:
        raise InvalidGrantError(str(exc)) from exc


# -- the server ---------------------------------------------------------------------------------

class AuthorizationServer(AuthlibServer):  # type: ignore[misc]
    """Authlib's server for one HTTP request, its hooks calling the connection service's steps
    inside ``step`` (the request's unit of work)."""

    def __init__(self, env: ConnectedApps, step: OAuthStep) -> None:
        super().__init__()
        self.env, self.step = env, step
        self.steps = env.connections
        self._clients: dict[str, Client | None] = {}
        self.register_token_generator("default", self._generate)
        self.register_grant(CodeGrant, [S256Only(required=True)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_extension(Issuer(env.issuer))

    def now(self) -> datetime:
        return self.steps.ctx.clock.now()

    # Authlib hooks

    def query_client(self, client_id: str) -> Client | None:
        if client_id not in self._clients:
            try:
                found = self.steps.client(self.step, client_id)
            except ClientSuspended as exc:  # say so, plainly
                raise InvalidClientError(description=str(exc), status_code=401) from exc
            self._clients[client_id] = Client(*found, self.env) if found is not None else None
        return self._clients[client_id]

    def _generate(self, grant_type: str, client: Client, user: Member | None = None,
                  scope: str | None = None, expires_in: int | None = None,
                  include_refresh_token: bool = True) -> dict[str, Any]:
        # the form of the answer; save_token replaces the tokens with the ones it stored
        p = self.env.prefixes
        token: dict[str, Any] = {
            "token_type": "Bearer", "access_token": tokens.generate(p.access_token),
            "expires_in": int(self.steps.lifetimes.access_token.total_seconds()),
        }
        if scope:
            token["scope"] = scope
        if include_refresh_token:
            token["refresh_token"] = tokens.generate(p.refresh_token)
        return token

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        if request.payload.grant_type == "authorization_code":
            record: AuthorizationCode = request.authorization_code.record
            connection = self.steps.connect(self.step, record, request.client.app)
            refresh_scopes, parent = list(record.scopes), None
        else:
            old: Token = request.refresh_token
            connection = old.state.connection
            refresh_scopes, parent = list(old.state.token.scopes), old.state.token.id
        request.connection = connection
        access_scopes = scope_list(token.get("scope")) or list(connection.scopes)
        access, expires_in, refresh = self.steps.issue(
            self.step, connection, access_scopes,
            refresh_scopes if "refresh_token" in token else None, parent)
        token["access_token"] = access
        token["expires_in"] = expires_in
        if refresh is not None:
            token["refresh_token"] = refresh

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # the adapter already built it

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Result:
        return Result(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


def run(env: ConnectedApps, action: Callable[[AuthorizationServer], T], *,
        readonly: bool = False, ip: str | None = None, request_id: str | None = None,
        user_agent: str | None = None, session_id: str | None = None) -> T:
    """Run one Authlib call in the connection service's transaction for this request (see
    the module docstring)."""
    return env.connections.transaction(
        lambda step: action(AuthorizationServer(env, step)), readonly=readonly, ip=ip,
        request_id=request_id, user_agent=user_agent, session_id=session_id)
