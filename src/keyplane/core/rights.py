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
from keyplane.core.model import Group, Principal, Role

_MEMBER_MANAGEMENT = frozenset({"keys:read", "members:read", "tenant:read"})


def principal_rights(
    principal: Principal, groups: Iterable[Group], catalogue: sc.Catalogue
) -> frozenset[str]:
    """Every scope ``principal`` holds now (expanded: write implies read)."""
    if not principal.enabled:
        return frozenset()
    data = catalogue.data_scopes()
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
    SESSION = "session"
    ACCESS_TOKEN = "access_token"


_TENANT_MANAGERS = frozenset(
    {CredentialKind.OPERATOR_KEY, CredentialKind.TENANT_KEY, CredentialKind.SESSION}
)

PERMISSIONS: dict[str, frozenset[CredentialKind]] = {
    "keys:read": _TENANT_MANAGERS,
    "keys:write": _TENANT_MANAGERS,
    "members:read": _TENANT_MANAGERS,
    "members:write": _TENANT_MANAGERS,
    "tenant:read": _TENANT_MANAGERS,
    "tenant:write": _TENANT_MANAGERS,
    "keys:verify": frozenset({CredentialKind.OPERATOR_KEY, CredentialKind.TENANT_KEY}),
    "platform:read": frozenset({CredentialKind.OPERATOR_KEY}),
    "platform:write": frozenset({CredentialKind.OPERATOR_KEY}),
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
    user_agent: str | None = None  # the client's User-Agent, recorded in the audit log
    session_id: str | None = None  # the console session a member acts through
    via: str | None = None  # the credential when it is none of the above, e.g. "cli"

    @property
    def actor(self) -> str:
        if self.name is not None:
            return self.name
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
        if self.kind is CredentialKind.OPERATOR_KEY and not permission.startswith("platform:"):
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
        if self.kind is CredentialKind.OPERATOR_KEY:
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
        if self.kind is CredentialKind.OPERATOR_KEY:
            if not requested:
                raise PermissionDenied(
                    "operator credentials must name a tenant (tenant_id)", code="tenant_required"
                )
            return requested
        assert self.tenant_id is not None
        if requested and requested != self.tenant_id:
            # another tenant's objects do not exist for this caller
            raise NotFound("no such tenant")
        return self.tenant_id


SYSTEM = Caller(
    kind=CredentialKind.OPERATOR_KEY, scopes=frozenset({"platform:write", "keys:verify"})
)
