"""Request bodies (for OpenAPI and type checks) and response serialisers.

Models are strict and forbid unknown fields; the services validate meaning (scopes exist,
CIDRs parse, limits hold) and name the field on failure.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyplane.core.model import ApiKey, AuditEvent, Group, Principal, Tenant
from keyplane.core.views import key_view, principal_view
from keyplane.core.views import ts as ts  # re-exported for the routes


def unstorable(value: Any) -> str | None:
    """Why ``value`` (any JSON value) cannot be stored and echoed back, or ``None``.

    NUL is refused by PostgreSQL text; an unpaired surrogate (``"\\ud800"`` in JSON) cannot be
    encoded as UTF-8, so a record holding one would break every response that lists it.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "must be valid Unicode text (no unpaired surrogates)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
        return value

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class RateLimitIn(Body):
    limit: int = Field(ge=1)
    window_seconds: int = Field(default=60, ge=1, le=86400)


REMAINING = ("Usage quota: how many more successful verifications the key may pass, counted "
             "exactly across workers (null: no quota). At 0 verification answers RATE_LIMITED.")


class KeyCreate(Body):
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    scopes: list[str] = Field(default_factory=list, max_length=200)
    owner_id: str | None = Field(default=None, max_length=40)
    expires_in_days: int | None = Field(default=90, description="null: never (if policy allows)")
    allowed_ips: list[str] = Field(default_factory=list, max_length=100)
    require_tls: bool = True
    ratelimit: RateLimitIn | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    remaining: int | None = Field(default=None, ge=0, description=REMAINING)


class KeyPatch(Body):
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    scopes: list[str] | None = Field(default=None, max_length=200)
    allowed_ips: list[str] | None = Field(default=None, max_length=100)
    require_tls: bool | None = None
    enabled: bool | None = None
    ratelimit: RateLimitIn | None = None
    meta: dict[str, Any] | None = None
    remaining: int | None = Field(default=None, ge=0, description=REMAINING)


class KeyRotate(Body):
    grace_period_seconds: int = Field(default=604800, ge=0, le=90 * 86400)


class KeyDuplicate(Body):
    name: str | None = Field(default=None, max_length=200)


class Verify(Body):
    key: str = Field(max_length=400)
    scopes: list[str] = Field(default_factory=list, max_length=50)
    ip: str | None = Field(default=None, max_length=64)
    tls: bool | None = None


class Use(Body):
    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    count: int = Field(ge=1, le=1_000_000_000)


class UsageReport(Body):
    uses: list[Use] = Field(max_length=1000)


class Policy(Body):
    default_expiry_days: int | None = None
    max_expiry_days: int | None = None
    allow_non_expiring: bool | None = None
    allowed_ips: list[str] | None = None
    require_tls_default: bool | None = None


class TenantCreate(Body):
    name: str = Field(max_length=200)
    policy: Policy | None = None


class TenantPatch(Body):
    name: str | None = Field(default=None, max_length=200)
    enabled: bool | None = None
    policy: Policy | None = None


Roles = Literal["admin", "member", "read_only"]


class MemberCreate(Body):
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=200)
    role: Roles = "member"
    password: str | None = Field(default=None, max_length=1024)
    group_ids: list[str] = Field(default_factory=list)


class MemberPatch(Body):
    name: str | None = Field(default=None, max_length=200)
    role: Roles | None = None
    enabled: bool | None = None
    password: str | None = Field(default=None, max_length=1024)
    group_ids: list[str] | None = None


class ServiceAccountCreate(Body):
    name: str = Field(max_length=200)
    role: Roles = "member"
    group_ids: list[str] = Field(default_factory=list)


class ServiceAccountPatch(Body):
    name: str | None = Field(default=None, max_length=200)
    role: Roles | None = None
    enabled: bool | None = None
    group_ids: list[str] | None = None


class GroupCreate(Body):
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    scopes: list[str] = Field(default_factory=list)


class GroupPatch(Body):
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    scopes: list[str] | None = None


class ScopePut(Body):
    description: str = Field(max_length=200)


def key_out(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    out = key_view(key)
    if secret is not None:
        out["key"] = secret
    return out


def tenant_out(t: Tenant) -> dict[str, Any]:
    p = t.policy
    return {
        "id": t.id, "object": "tenant", "name": t.name, "enabled": t.enabled,
        "created_at": ts(t.created_at),
        "policy": {
            "default_expiry_days": p.default_expiry_days, "max_expiry_days": p.max_expiry_days,
            "allow_non_expiring": p.allow_non_expiring, "allowed_ips": p.allowed_ips,
            "require_tls_default": p.require_tls_default,
        },
    }


def principal_out(p: Principal) -> dict[str, Any]:
    return principal_view(p)


def group_out(g: Group) -> dict[str, Any]:
    return {"id": g.id, "object": "group", "tenant_id": g.tenant_id, "name": g.name,
            "description": g.description, "scopes": g.scopes, "created_at": ts(g.created_at)}


def audit_out(a: AuditEvent) -> dict[str, Any]:
    return {"id": a.id, "object": "audit_event", "at": ts(a.at), "tenant_id": a.tenant_id,
            "actor": a.actor, "action": a.action, "target": a.target, "outcome": a.outcome,
            "ip": a.ip, "request_id": a.request_id, "details": a.details}
