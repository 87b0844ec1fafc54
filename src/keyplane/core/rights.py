"""Who may do what.

Two tables, both default-deny:

* what a principal's *role* and *groups* let it reach (``principal_rights``): a key never exceeds
  its owner's current rights, so demoting, disabling or regrouping an owner narrows its keys;
* which *credential kinds* may exercise which management permission (``PERMISSIONS``): an OAuth
  access token can read contacts if granted, but can never mint keys or change tenant policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from keyplane.core import scopes as sc
from keyplane.core.errors import NotFound, PermissionDenied
from keyplane.core.model import Group, Principal, PrincipalKind, Role, TenantPolicy

_MEMBER_MANAGEMENT = frozenset({"keys:read", "members:read", "tenant:read"})

_DEFAULT_POLICY = TenantPolicy()
NO_GROUP = ("the API user is in no data-access group, so it holds no data scopes: add it to "
            "a group (or turn off the tenant policy api_users_need_group)")
NO_GROUP_NOTE = ("This API user is in no data-access group, so it holds no data scopes: its keys "
                 "verify as INSUFFICIENT_SCOPE until it is added to a group (or the tenant "
                 "policy api_users_need_group is turned off).")


def reaches_no_data(principal: Principal, policy: TenantPolicy) -> bool:
    """An API user (service account) in no data-access group, in a tenant whose policy
    ``api_users_need_group`` asks for one (the default), holds no data scopes. Members keep a
    group-less member's reach (every data scope their role allows)."""
    return (principal.kind is PrincipalKind.SERVICE_ACCOUNT and policy.api_users_need_group
            and not principal.group_ids)


def principal_rights(
    principal: Principal, groups: Iterable[Group], catalogue: sc.Catalogue,
    policy: TenantPolicy | None = None,
) -> frozenset[str]:
    """Every scope ``principal`` holds now (expanded: write implies read), under its tenant's
    ``policy`` (None: the default policy; it changes nothing for a member)."""
    if not principal.enabled:
        return frozenset()
    data = catalogue.data_scopes()
    if reaches_no_data(principal, policy or _DEFAULT_POLICY):
        data = frozenset()
    if principal.role is Role.READ_ONLY:
        data = frozenset(s for s in data if s.endswith(":read"))
    group_list = list(groups)
    if group_list:
        reachable = sc.expand(s for g in group_list for s in g.scopes)
        data = data & reachable
    if principal.role is Role.ADMIN:
        management = frozenset(sc.MANAGEMENT_SCOPES)
    else:
        management = _MEMBER_MANAGEMENT
    return data | management


class CredentialKind(StrEnum):
    OPERATOR_KEY = "operator_key"
    TENANT_KEY = "tenant_key"
    SESSION = "session"  # a tenant member signed in to the console
    ACCESS_TOKEN = "access_token"
    OPERATOR_SESSION = "operator_session"  # the operator's staff signed in to the console
    DEVELOPER_SESSION = "developer_session"  # a partner developer: no management right at all


OPERATORS = frozenset({CredentialKind.OPERATOR_KEY, CredentialKind.OPERATOR_SESSION})
"""The credentials that act as the operator: above tenants, through the same rights."""

_TENANT_MANAGERS = OPERATORS | {CredentialKind.TENANT_KEY, CredentialKind.SESSION}

PERMISSIONS: dict[str, frozenset[CredentialKind]] = {
    "keys:read": _TENANT_MANAGERS,
    "keys:write": _TENANT_MANAGERS,
    "members:read": _TENANT_MANAGERS,
    "members:write": _TENANT_MANAGERS,
    "tenant:read": _TENANT_MANAGERS,
    "tenant:write": _TENANT_MANAGERS,
    "keys:verify": frozenset({CredentialKind.OPERATOR_KEY, CredentialKind.TENANT_KEY}),
    "platform:read": OPERATORS,
    "platform:write": OPERATORS,
}


@dataclass(frozen=True)
class Caller:
    """An authenticated credential making a management call."""

    kind: CredentialKind
    scopes: frozenset[str]
    tenant_id: str | None = None
    principal_id: str | None = None
    key_id: str | None = None
    ip: str | None = None
    request_id: str | None = None
    name: str | None = None  # an actor with no key or principal, e.g. "secret-scanning"
    account_id: str | None = None  # operator staff or a partner developer (core.accounts)
    user_agent: str | None = None  # the client's User-Agent, recorded in the audit log
    session_id: str | None = None  # the console session a person acts through
    via: str | None = None  # the credential when it is none of the above, e.g. "cli"

    @property
    def is_operator(self) -> bool:
        """The operator's key, or one of its staff signed in: stands above tenants."""
        return self.kind in OPERATORS

    @property
    def actor(self) -> str:
        if self.name is not None:
            return self.name
        if self.account_id is not None:
            return f"account:{self.account_id}"
        if self.key_id is not None:
            return f"key:{self.key_id}"
        if self.principal_id is not None:
            return f"principal:{self.principal_id}"
        return "system"

    @property
    def credential(self) -> str:
        """The credential this caller acted through, as the audit log records it: ``key:<id>``,
        ``oauth_token:<id>``, ``oauth_client:<app id>``, ``session:<id>``, ``cli`` or
        ``system``. Never a secret: ids only."""
        if self.via is not None:
            return self.via
        if self.kind is CredentialKind.ACCESS_TOKEN and self.key_id is not None:
            return f"oauth_token:{self.key_id}"
        if self.key_id is not None:
            return f"key:{self.key_id}"
        if self.session_id is not None:
            return f"session:{self.session_id}"
        if self.kind is CredentialKind.SESSION:
            return "password"  # signing in: no session yet
        return "system"

    def holds(self, permission: str) -> bool:
        if self.kind not in PERMISSIONS.get(permission, frozenset()):
            return False
        if self.is_operator and not permission.startswith("platform:"):
            if permission == "keys:verify":
                return "keys:verify" in self.scopes
            needed = "platform:write" if permission.endswith(":write") else "platform:read"
            return needed in sc.expand(self.scopes)
        return permission in sc.expand(self.scopes)

    def lacks(self, scopes: Iterable[str]) -> list[str]:
        """Those of ``scopes`` that reach beyond this credential (write implies read).

        A credential never hands out, takes over or widens a key reaching further than itself:
        creating, duplicating, rotating, editing or unlocking a key needs every scope the key
        grants. The operator's platform credential stands above tenants and lacks nothing.
        """
        if self.is_operator:
            return []
        held = sc.expand(self.scopes)
        return sorted(s for s in set(scopes) if not sc.expand((s,)) <= held)

    def require(self, permission: str) -> None:
        if not self.holds(permission):
            raise PermissionDenied(
                f"this credential lacks the {permission} scope", code="insufficient_scope"
            )

    def tenant_for(self, requested: str | None) -> str:
        """The tenant a call acts on: the caller's own, or any one named by the operator."""
        if self.is_operator:
            if not requested:
                raise PermissionDenied(
                    "operator credentials must name a tenant (tenant_id)", code="tenant_required"
                )
            return requested
        if self.tenant_id is None:  # a partner developer belongs to no tenant
            raise NotFound("no such tenant")
        if requested and requested != self.tenant_id:
            # another tenant's objects do not exist for this caller
            raise NotFound("no such tenant")
        return self.tenant_id


SYSTEM = Caller(
    kind=CredentialKind.OPERATOR_KEY, scopes=frozenset({"platform:write", "keys:verify"})
)
