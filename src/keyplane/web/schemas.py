"""Request bodies (for OpenAPI and type checks); the answers' serialisers are in
``keyplane.core.views`` (shared with the CLI).

Models are strict and forbid unknown fields; the services validate meaning (scopes exist,
CIDRs parse, limits hold) and name the field on failure.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import SkipJsonSchema

from keyplane.services import shares
from keyplane.services import validate as v
from keyplane.services.passwords import MAX_PASSWORD, MIN_PASSWORD

# Human-entered text: the services refuse invisible and bidirectional-control characters and
# blank names (naming the field and the character); the schema states the same rule with the
# same character class, so clients and contract tests know it.
Name = Annotated[str, Field(max_length=v.MAX_NAME, json_schema_extra={
    "pattern": v.NAME_PATTERN,
    "description": "Not blank; no control, invisible or bidirectional-control characters"})]
Text = Annotated[str, Field(max_length=v.MAX_DESCRIPTION, json_schema_extra={
    "pattern": v.TEXT_PATTERN,
    "description": "No control, invisible or bidirectional-control characters"})]
ScopeDescription = Annotated[str, Field(max_length=200, json_schema_extra={
    "pattern": v.NAME_PATTERN,
    "description": "Not blank; no control, invisible or bidirectional-control characters"})]
# an optional field that may be left out but not sent as null
Absent = SkipJsonSchema[None]
# bounds the services check (naming the field); stated here for the schema only
Days = Annotated[int, Field(json_schema_extra={"minimum": 1, "maximum": v.MAX_DAYS})]
Email = Annotated[str, Field(max_length=320, json_schema_extra={"pattern": v.EMAIL_PATTERN})]
Password = Annotated[str, Field(json_schema_extra={"minLength": MIN_PASSWORD,
                                                   "maxLength": MAX_PASSWORD})]
# formats the services check with ``ipaddress``; the contract test teaches schemathesis them
Cidr = Annotated[str, Field(max_length=49, json_schema_extra={
    "format": "ip-network",
    "description": "An IPv4 or IPv6 network in CIDR notation (10.0.0.0/8, 2001:db8::/32) with "
                   "its host bits zero, no leading zeros and no zone id; a plain address means "
                   "that one address"})]
IpAddress = Annotated[str, Field(max_length=64, json_schema_extra={
    "format": "ip-address", "description": "An IPv4 or IPv6 address"})]
# scope names must be in the catalogue; /openapi.json lists the catalogue's names as an enum
# ("x-keyplane-scopes": a kind of web/contract.py's Scopes, filled in when it is served)
Scope = Annotated[str, Field(max_length=64, json_schema_extra={"x-keyplane-scopes": "tenant"})]
OperatorScope = Annotated[str, Field(max_length=64,
                                     json_schema_extra={"x-keyplane-scopes": "operator"})]
DataScope = Annotated[str, Field(max_length=64, json_schema_extra={"x-keyplane-scopes": "data"})]
ScopeList = Annotated[list[Scope], Field(max_length=v.MAX_SCOPES)]
OperatorScopeList = Annotated[list[OperatorScope], Field(max_length=v.MAX_SCOPES)]
DataScopeList = Annotated[list[DataScope], Field(max_length=v.MAX_SCOPES)]
CidrList = Annotated[list[Cidr], Field(max_length=v.MAX_IPS)]
IdList = Annotated[list[str], Field(max_length=v.MAX_GROUPS)]


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

    @field_validator("*", mode="before")
    @classmethod
    def _integral(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON Schema counts 350.0 as an integer, so integer fields take it (never 350.5)."""
        if isinstance(value, float) and value.is_integer() and info.field_name and \
                _takes_int(cls.model_fields[info.field_name].annotation):
            return int(value)
        return value

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def _takes_int(annotation: Any) -> bool:
    for option in (get_args(annotation) if get_origin(annotation) in (Union, UnionType)
                   else (annotation,)):
        if get_origin(option) is Annotated:
            option = get_args(option)[0]
        if option is int:
            return True
    return False


class RateLimitIn(Body):
    limit: int = Field(ge=1, le=v.MAX_RATE_LIMIT, description=(
        "Verifications admitted in any window of window_seconds (moving window)"))
    window_seconds: int = Field(default=60, ge=1, le=v.MAX_WINDOW_SECONDS)


REMAINING = ("Usage quota: how many more successful verifications the key may pass, counted "
             "exactly across workers (null: no quota). At 0 verification answers RATE_LIMITED.")


class OperatorKeyCreate(Body):
    """An operator key: it belongs to no tenant and has no owner."""

    name: Name
    description: Text | None = None
    scopes: OperatorScopeList = Field(default_factory=list)
    expires_in_days: Days | None = Field(default=90, description=(
        "Days until the key expires; null: never, where the tenant's policy allows it"))
    allowed_ips: CidrList = Field(default_factory=list)
    require_tls: bool = True
    ratelimit: RateLimitIn | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    remaining: int | None = Field(default=None, ge=0, le=v.MAX_REMAINING, description=REMAINING)


class KeyCreate(OperatorKeyCreate):
    scopes: ScopeList = Field(default_factory=list)
    owner_id: str | None = Field(default=None, max_length=40)


class KeyPatch(Body):
    name: Name | Absent = None
    description: Text | None = None
    scopes: ScopeList | Absent = None
    allowed_ips: CidrList | Absent = None
    require_tls: bool | Absent = None
    enabled: bool | Absent = None
    ratelimit: RateLimitIn | None = None
    meta: dict[str, Any] | None = None
    remaining: int | None = Field(default=None, ge=0, le=v.MAX_REMAINING, description=REMAINING)


class KeyRotate(Body):
    grace_period_seconds: int = Field(default=604800, ge=0, le=v.MAX_GRACE_SECONDS)


class KeyDuplicate(Body):
    name: Name | Absent = None


class Verify(Body):
    key: str = Field(max_length=400, description="The key, `<name>:<key>`, or the raw header "
                     "value `Bearer [<name>:]<key>`")
    scopes: list[str] = Field(default_factory=list, max_length=50)
    ip: IpAddress | None = None
    tls: bool | None = None
    tenant_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$",
        description="The Location ID given beside the key: a key of another tenant is "
        "NOT_FOUND")


class Use(Body):
    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    count: int = Field(ge=1, le=1_000_000_000)


class UsageReport(Body):
    uses: list[Use] = Field(max_length=1000)


class Policy(Body):
    default_expiry_days: Days | Absent = None
    max_expiry_days: Days | None = None
    allow_non_expiring: bool | Absent = None
    allowed_ips: CidrList | None = None
    require_tls_default: bool | Absent = None
    leaked_key_action: Literal["revoke", "lock"] | Absent = Field(
        default=None, description="A key reported leaked is revoked at once (default) or "
        "locked (reversible) and its owner and the tenant's admins told")
    revoke_unused_after_days: Annotated[int, Field(json_schema_extra={
        "minimum": 7, "maximum": 3650})] | None = Field(
        default=None, description="Keys not used for this many days (never-used keys: "
        "since creation) are revoked with reason `unused`, after a `key.unused_warning` "
        "to their owner up to 7 days before; null (the default) turns it off")
    api_users_need_group: bool | Absent = Field(
        default=None, description="An API user (service account) in no data-access group "
        "holds no data scopes: its keys verify as INSUFFICIENT_SCOPE (default true); false "
        "lets a group-less API user reach every data scope its role allows, as members do")
    audit_retention_days: Annotated[int, Field(json_schema_extra={
        "minimum": 1, "maximum": 36500})] | None = Field(
        default=None, description="Audit entries older than this many days are deleted by "
        "the hygiene job or `keyplane audit prune`; the tenant's hash chain keeps a checkpoint "
        "so the rest still verifies. null (the default) keeps them forever")
    require_admin_two_factor: bool | Absent = Field(
        default=None, description="Admins must use two-factor sign-in (TOTP): an admin "
        "without it is sent to set it up before anything else in the console")


class TenantCreate(Body):
    name: Name
    policy: Policy | None = None


class TenantPatch(Body):
    name: Name | Absent = None
    enabled: bool | Absent = None
    policy: Policy | Absent = None


Roles = Literal["admin", "member", "read_only"]


class MemberCreate(Body):
    email: Email
    name: Name | None = None
    role: Roles = "member"
    password: Password | Absent = None
    group_ids: IdList = Field(default_factory=list)


class MemberPatch(Body):
    name: Name | Absent = None
    role: Roles | Absent = None
    enabled: bool | Absent = None
    password: Password | Absent = None
    group_ids: IdList | Absent = None


class ServiceAccountCreate(Body):
    name: Name
    role: Roles = "member"
    group_ids: IdList = Field(default_factory=list)


class ServiceAccountPatch(Body):
    name: Name | Absent = None
    role: Roles | Absent = None
    enabled: bool | Absent = None
    group_ids: IdList | Absent = None


class GroupCreate(Body):
    name: Name
    description: Text | None = None
    scopes: DataScopeList = Field(default_factory=list)


class GroupPatch(Body):
    name: Name | Absent = None
    description: Text | None = None
    scopes: DataScopeList | Absent = None


class ShareCreate(Body):
    ciphertext: str = Field(
        max_length=shares.MAX_CIPHERTEXT, json_schema_extra={
            # unpadded base64url of at least iv + tag + one byte (29 bytes: 39 characters)
            "minLength": 39, "pattern": "^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"},
        description="Unpadded base64url of iv (12 bytes) || AES-GCM ciphertext || tag "
        "(16 bytes); the key stays in the link's fragment")
    expires_in_seconds: int = Field(default=shares.DEFAULT_SECONDS, ge=shares.MIN_SECONDS,
                                    le=shares.MAX_SECONDS)
    note: Annotated[str, Field(max_length=shares.MAX_NOTE, json_schema_extra={
        "pattern": v.TEXT_PATTERN})] | None = None


class ScopePut(Body):
    description: ScopeDescription
