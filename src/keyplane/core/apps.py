"""Connected apps: partner apps (OAuth clients), connections (grants), their credentials and
the rules about them. Pure Python: the OAuth protocol itself lives in ``keyplane.oauth``.

    App ──< ClientSecret            one secret, or two while a rotation's grace runs
     │
     └──< Connection ──< OAuthToken  one connection per consent; access and refresh tokens
             ▲                        (refresh tokens form one rotation family per connection)
    AuthorizationCode ─┘              single use; becomes a connection when redeemed

A connection is what a tenant admin sees and revokes ("connected apps"); revoking it ends every
token of it at once. Reusing a rotated refresh token or a redeemed code revokes it as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

from keyplane.core import scopes as sc
from keyplane.core.errors import Conflict, ValidationError
from keyplane.core.model import Page
from keyplane.core.tokens import valid_prefix

MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_SCOPES = 200  # as for keys and groups (services.validate.MAX_SCOPES)


class AppStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUSPENDED = "suspended"


# which operator decision is allowed from which status
TRANSITIONS: dict[str, dict[AppStatus, AppStatus]] = {
    "approve": {AppStatus.PENDING: AppStatus.APPROVED, AppStatus.SUSPENDED: AppStatus.APPROVED},
    "reject": {AppStatus.PENDING: AppStatus.REJECTED},
    "suspend": {AppStatus.APPROVED: AppStatus.SUSPENDED},
}


def transition(status: AppStatus, action: str) -> AppStatus:
    """The status after ``action``, or a Conflict that says why it is not allowed."""
    allowed = TRANSITIONS[action]
    if status not in allowed:
        froms = ", ".join(s.value for s in allowed)
        raise Conflict(f"cannot {action} an app that is {status.value} (only from: {froms})",
                       field="status", code="invalid_status")
    return allowed[status]


@dataclass
class App:
    """A partner application: an OAuth client once the operator approves it."""

    id: str
    name: str
    description: str
    homepage: str
    redirect_uris: list[str]
    scopes: list[str]
    status: AppStatus
    created_at: datetime
    updated_at: datetime
    owner_tenant_id: str | None  # the tenant that registered it; None: the operator
    created_by: str
    client_id: str | None = None  # issued on first approval
    approved_at: datetime | None = None
    status_reason: str = ""
    developer_id: str | None = None  # the partner developer's account that registered it

    @property
    def active(self) -> bool:
        return self.status is AppStatus.APPROVED and self.client_id is not None


@dataclass
class ClientSecret:
    id: str
    app_id: str
    digest: str
    pepper_id: str
    start: str
    created_at: datetime
    expires_at: datetime | None = None  # set while a rotation's grace period runs


@dataclass
class AuthorizationCode:
    id: str
    digest: str
    pepper_id: str
    app_id: str
    tenant_id: str
    principal_id: str
    scopes: list[str]
    redirect_uri: str
    code_challenge: str
    code_challenge_method: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    connection_id: str | None = None


@dataclass
class Connection:
    """One consent: an admin of ``tenant_id`` let ``app_id`` act with ``scopes``."""

    id: str
    tenant_id: str
    app_id: str
    principal_id: str | None  # the authorising admin (None once that member is deleted)
    scopes: list[str]
    created_at: datetime
    expires_at: datetime  # absolute end of the refresh-token family; rotation never extends it
    revoked_at: datetime | None = None
    revoked_reason: str = ""
    last_used_at: datetime | None = None
    request_count: int = 0
    denied_count: int = 0


class TokenKind(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


@dataclass
class OAuthToken:
    id: str
    connection_id: str
    kind: TokenKind
    digest: str
    pepper_id: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    rotated_at: datetime | None = None  # refresh tokens: when it was exchanged for a new one
    parent_id: str | None = None  # the refresh token this one was issued from


@dataclass
class WebSession:
    """A signed-in member. The cookie holds a random token; only its digest is stored."""

    id: str
    digest: str
    pepper_id: str
    principal_id: str
    tenant_id: str
    created_at: datetime
    expires_at: datetime
    ip: str | None = None
    revoked_at: datetime | None = None
    second_factor_at: datetime | None = None  # the last TOTP or recovery code proved here


@dataclass(frozen=True)
class CredentialPrefixes:
    """Each credential type has its own prefix, so scanners and the verifier tell them apart."""

    key: str
    access_token: str
    refresh_token: str
    client_secret: str
    code: str

    @classmethod
    def derive(cls, key_prefix: str) -> CredentialPrefixes:
        def make(suffix: str) -> str:
            return key_prefix[: 16 - len(suffix)] + suffix

        out = cls(key=key_prefix, access_token=make("at"), refresh_token=make("rt"),
                  client_secret=make("cs"), code=make("ac"))
        values = [out.key, out.access_token, out.refresh_token, out.client_secret, out.code]
        if len(set(values)) != len(values) or not all(valid_prefix(v) for v in values):
            raise ValueError(f"the key prefix {key_prefix!r} leaves no distinct prefixes for "
                             "OAuth credentials; choose a shorter one")
        return out


# -- input rules ------------------------------------------------------------------------------

_LOOPBACK_NAMES = frozenset({"localhost"})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_uri(value: Any, field_name: str, *, allow_query: bool = True) -> str:
    """An absolute https URI (or http on a loopback address), kept exactly as given.

    No fragment, no userinfo (``https://app.example@evil.example/`` is refused), no spaces or
    control characters. Redirect URIs are compared as exact strings, so nothing is normalised.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field_name} must be a non-empty string", field=field_name)
    if len(value) > MAX_URI_LENGTH:
        raise ValidationError(f"{field_name} must be at most {MAX_URI_LENGTH} characters",
                              field=field_name)
    if any(ord(c) <= 32 or ord(c) == 127 or c in '"<>\\^`{|}' for c in value):
        raise ValidationError(f"{field_name} must not contain spaces, quotes or control "
                              "characters", field=field_name)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValidationError(f"{field_name} is not a valid URI", field=field_name) from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValidationError(f"{field_name} must be an absolute https:// URI", field=field_name)
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValidationError(f"{field_name} must use https (plain http only on a loopback "
                              "address such as 127.0.0.1)", field=field_name)
    if "@" in parts.netloc:
        raise ValidationError(f"{field_name} must not contain user information (@)",
                              field=field_name)
    if parts.fragment or "#" in value:
        raise ValidationError(f"{field_name} must not contain a fragment (#)", field=field_name)
    if not allow_query and parts.query:
        raise ValidationError(f"{field_name} must not contain a query", field=field_name)
    return value


def redirect_uris(value: Any, field_name: str = "redirect_uris") -> list[str]:
    if not isinstance(value, list | tuple) or not value:
        raise ValidationError(f"{field_name} must be a non-empty list of URIs", field=field_name)
    if len(value) > MAX_REDIRECT_URIS:
        raise ValidationError(f"{field_name} may hold at most {MAX_REDIRECT_URIS} URIs",
                              field=field_name)
    out: list[str] = []
    for uri in value:
        checked = web_uri(uri, field_name)
        if checked not in out:
            out.append(checked)
    return out


def redirect_matches(registered: Sequence[str], presented: str | None) -> bool:
    """Exact string comparison (RFC 9700 §2.1): no prefix, case, port or path leniency."""
    return presented is not None and any(presented == uri for uri in registered)


def app_scopes(value: Any, catalogue: sc.Catalogue, field_name: str = "scopes") -> list[str]:
    """Scopes an app may ask for: data scopes of the catalogue (never management scopes)."""
    if not isinstance(value, list | tuple) or not value or not all(
        isinstance(s, str) for s in value
    ):
        raise ValidationError(f"{field_name} must be a non-empty list of scopes",
                              field=field_name)
    if len(value) > MAX_SCOPES:
        raise ValidationError(f"{field_name} may hold at most {MAX_SCOPES} scopes",
                              field=field_name)
    data = catalogue.data_scopes()
    for s in value:
        if s not in catalogue:
            raise ValidationError(f"{field_name}: unknown scope {s!r}", field=field_name)
        if s not in data:
            raise ValidationError(f"{field_name}: {s!r} is a management scope; apps may ask "
                                  "only for data scopes", field=field_name)
    return sc.normalise(value)


def scope_list(text: str | None) -> list[str]:
    """The OAuth ``scope`` parameter (space-separated) as a list, order kept, duplicates gone."""
    out: list[str] = []
    for s in (text or "").split(" "):
        if s and s not in out:
            out.append(s)
    return out


def effective_scopes(token_scopes: Iterable[str], connection_scopes: Iterable[str],
                     rights: frozenset[str]) -> frozenset[str]:
    """What an access token may do now: its scopes, within its connection, within what the
    authorising admin holds today (expanded: write implies read)."""
    return sc.expand(token_scopes) & sc.expand(connection_scopes) & rights


# -- storage ports -----------------------------------------------------------------------------

class AppRepo(Protocol):
    def add(self, app: App) -> None: ...
    def get(self, app_id: str) -> App | None: ...
    def by_client_id(self, client_id: str) -> App | None: ...
    def update(self, app: App) -> None: ...
    def page(self, *, owner_tenant_id: str | None, status: str | None, limit: int,
             cursor: str | None, developer_id: str | None = None) -> Page[App]: ...
    def add_secret(self, secret: ClientSecret) -> None: ...
    def secrets(self, app_id: str) -> list[ClientSecret]: ...
    def update_secret(self, secret: ClientSecret) -> None: ...
    def delete_secret(self, secret_id: str) -> None: ...


class CodeRepo(Protocol):
    def add(self, code: AuthorizationCode) -> None: ...
    def find(self, digest: str, *, for_update: bool = False) -> AuthorizationCode | None: ...
    def update(self, code: AuthorizationCode) -> None: ...


class ConnectionRepo(Protocol):
    def add(self, connection: Connection) -> None: ...
    def get(self, connection_id: str, *, for_update: bool = False) -> Connection | None: ...
    def update(self, connection: Connection) -> None: ...
    def page(self, tenant_id: str, *, active_at: datetime | None, limit: int,
             cursor: str | None) -> Page[Connection]: ...
    def ids_for_app(self, app_id: str) -> list[str]: ...
    def connected(self, tenant_id: str, app_id: str) -> bool:
        """Whether ``app_id`` has, or had, a connection to ``tenant_id``."""
        ...
    def active_for(self, tenant_id: str, app_id: str, principal_id: str,
                   at: datetime) -> Connection | None: ...
    def record_usage(self, last_used: dict[str, datetime],
                     counts: dict[str, tuple[int, int]]) -> None: ...


class TokenRepo(Protocol):
    def add(self, token: OAuthToken) -> None: ...
    def find(self, digest: str, *, for_update: bool = False) -> OAuthToken | None: ...
    def update(self, token: OAuthToken) -> None: ...
    def revoke_connection(self, connection_id: str, at: datetime) -> int: ...


class SessionRepo(Protocol):
    def add(self, session: WebSession) -> None: ...
    def find(self, digest: str) -> WebSession | None: ...
    def update(self, session: WebSession) -> None: ...
    def revoke_for_principal(self, principal_id: str, at: datetime, *,
                             keep: str | None = None) -> int:
        """End the member's live sessions (all but ``keep``); how many were ended."""
        ...


class ConnectedRepos(Protocol):
    """The repositories of connected apps, bound to one unit of work's transaction."""

    apps: AppRepo
    codes: CodeRepo
    connections: ConnectionRepo
    tokens: TokenRepo
    sessions: SessionRepo


@dataclass(frozen=True)
class ConnectionView:
    """A connection with what a person needs to recognise it."""

    connection: Connection
    app: App
    authorised_by: dict[str, Any] = field(default_factory=dict)
