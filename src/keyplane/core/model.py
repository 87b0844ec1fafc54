"""The domain's records, as plain dataclasses. Storage maps them; the web serialises them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, NamedTuple, TypeVar


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READ_ONLY = "read_only"


class PrincipalKind(StrEnum):
    MEMBER = "member"
    SERVICE_ACCOUNT = "service_account"


class LeakAction(StrEnum):
    """What happens to a key reported leaked: revoked at once, or locked (reversible)."""

    REVOKE = "revoke"
    LOCK = "lock"


@dataclass
class TenantPolicy:
    default_expiry_days: int = 90
    max_expiry_days: int | None = 365
    allow_non_expiring: bool = False
    allowed_ips: list[str] = field(default_factory=list)
    require_tls_default: bool = True
    leaked_key_action: LeakAction = LeakAction.REVOKE
    revoke_unused_after_days: int | None = None  # None: unused keys are never revoked
    # an API user (service account) in no data-access group holds no data scopes
    api_users_need_group: bool = True
    audit_retention_days: int | None = None  # None: audit entries are kept forever
    require_admin_two_factor: bool = False  # admins enrol TOTP before anything else


@dataclass
class Tenant:
    id: str
    name: str
    created_at: datetime
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    enabled: bool = True


@dataclass
class Principal:
    """A member (signs in) or a service account (API only: owns keys, never signs in)."""

    id: str
    tenant_id: str
    kind: PrincipalKind
    name: str
    role: Role
    created_at: datetime
    email: str | None = None
    password_hash: str | None = None
    enabled: bool = True
    group_ids: list[str] = field(default_factory=list)

    @property
    def can_sign_in(self) -> bool:
        return self.kind is PrincipalKind.MEMBER and self.enabled and self.password_hash is not None


@dataclass
class Group:
    """A data-access group: members of any group reach only the union of their groups' scopes."""

    id: str
    tenant_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    description: str = ""


@dataclass(frozen=True)
class RateLimit:
    limit: int
    window_seconds: int


@dataclass
class KeySecret:
    """One secret of a key. A key has one, or two while a rotation's grace period runs."""

    id: str
    key_id: str
    digest: str
    pepper_id: str
    start: str
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class KeyLeak:
    """Where and when a key's secret was found exposed (never the secret itself)."""

    at: datetime
    url: str
    source: str


@dataclass
class ApiKey:
    id: str
    tenant_id: str | None  # None: an operator (platform) key
    owner_id: str | None  # None: an operator key
    name: str
    prefix: str
    start: str
    scopes: list[str]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    lifetime_days: int | None
    description: str = ""
    created_by: str | None = None
    last_used_at: datetime | None = None
    allowed_ips: list[str] = field(default_factory=list)
    require_tls: bool = True
    enabled: bool = True
    revoked_at: datetime | None = None
    ratelimit: RateLimit | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    previous_expires_at: datetime | None = None  # deadline of the old secret during a grace
    remaining: int | None = None  # usage quota: verifications left (None: no quota)
    leak: KeyLeak | None = None  # set when a secret of this key was reported leaked

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None

    @property
    def version(self) -> str:
        """Names this state of the key's settings and secret (sent as its HTTP ``ETag``): any
        edit changes it, and so does every rotation, since each brings a new random ``start``.
        Usage (``last_used_at``, the quota left) is not part of it."""
        state = [self.id, self.owner_id, self.name, self.description, self.start,
                 sorted(self.scopes), self.allowed_ips, self.require_tls, self.enabled,
                 self.revoked_at, self.expires_at, self.updated_at, self.ratelimit, self.meta]
        encoded = json.dumps(state, sort_keys=True, default=_stable).encode()
        return hashlib.sha256(encoded).hexdigest()[:20]


@dataclass
class AuditEvent:
    id: str
    at: datetime
    tenant_id: str | None
    actor: str
    action: str
    target: str
    outcome: str = "success"
    ip: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    credential: str | None = None  # what the actor acted through: "key:<id>", "session:<id>"...
    user_agent: str | None = None
    changes: dict[str, Any] | None = None  # {"before": {...}, "after": {...}}, never secrets
    # the tenant's hash chain (core/audit_chain.py), set by the store when the entry is added
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None


@dataclass
class Share:
    """A one-time share link: ciphertext the server cannot read (the key is in the link's
    fragment, never sent to the server), handed out once and then deleted."""

    id: str
    tenant_id: str | None  # None: made by the operator
    created_by: str
    note: str
    created_at: datetime
    expires_at: datetime
    ciphertext: str | None  # None once opened, withdrawn or expired
    opened_at: datetime | None = None
    withdrawn_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """``ready``, ``opened``, ``withdrawn`` or ``expired``."""
        if self.opened_at is not None:
            return "opened"
        if self.withdrawn_at is not None:
            return "withdrawn"
        if now >= self.expires_at or self.ciphertext is None:
            return "expired"
        return "ready"


_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: list[_T]
    next_cursor: str | None


def _stable(value: Any) -> Any:
    """The same text for the same value however storage returned it (time zones included)."""
    return value.timestamp() if isinstance(value, datetime) else repr(value)


class Denial(NamedTuple):
    """One refused verification of a key: when, the outcome code, why in words, and from
    which address when the verifier said (the console's "last denials")."""

    at: datetime
    outcome: str
    reason: str
    ip: str | None = None
