"""Who may do what: a principal's rights (role ∩ groups) and which credential kinds may exercise
which management permission (default deny)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keyplane.core import scopes as sc
from keyplane.core.errors import NotFound, PermissionDenied
from keyplane.core.model import Group, Principal, PrincipalKind, Role, TenantPolicy
from keyplane.core.rights import (
    PERMISSIONS,
    SYSTEM,
    Caller,
    CredentialKind,
    principal_rights,
    reaches_no_data,
)
from keyplane.core.scopes import Catalogue

NOW = datetime(2030, 1, 1, tzinfo=UTC)
CAT = Catalogue()
DATA = CAT.data_scopes()
READS = frozenset(s for s in DATA if s.endswith(":read"))
ADMIN_MGMT = frozenset(sc.MANAGEMENT_SCOPES)
MEMBER_MGMT = frozenset({"keys:read", "members:read", "tenant:read"})


def principal(role: Role, *, enabled: bool = True, kind: PrincipalKind = PrincipalKind.MEMBER,
              ) -> Principal:
    return Principal(id="usr_1", tenant_id="loc_1", kind=kind, name="p", role=role,
                     created_at=NOW, enabled=enabled)


def group(*scopes: str) -> Group:
    return Group(id="grp_" + "_".join(scopes), tenant_id="loc_1", name="g", scopes=list(scopes),
                 created_at=NOW)


def test_admin_holds_every_data_scope_and_management_but_no_platform() -> None:
    rights = principal_rights(principal(Role.ADMIN), [], CAT)
    assert rights == DATA | ADMIN_MGMT
    assert "keys:write" in rights and "tenant:write" in rights
    assert not any(s.startswith("platform:") for s in rights)


def test_member_holds_data_and_read_only_management() -> None:
    rights = principal_rights(principal(Role.MEMBER), [], CAT)
    assert rights == DATA | MEMBER_MGMT
    assert "keys:write" not in rights and "members:write" not in rights


def test_read_only_holds_only_reads() -> None:
    rights = principal_rights(principal(Role.READ_ONLY), [], CAT)
    assert rights == READS | MEMBER_MGMT
    assert not any(s.endswith(":write") for s in rights)


def test_service_accounts_follow_their_role() -> None:
    svc = principal(Role.READ_ONLY, kind=PrincipalKind.SERVICE_ACCOUNT)
    loose = TenantPolicy(api_users_need_group=False)
    assert principal_rights(svc, [], CAT, loose) == READS | MEMBER_MGMT


def test_an_api_user_in_no_group_holds_no_data_scopes_unless_the_policy_is_off() -> None:
    svc = principal(Role.ADMIN, kind=PrincipalKind.SERVICE_ACCOUNT)
    for policy in (TenantPolicy(), None):  # on by default
        rights = principal_rights(svc, [], CAT, policy)
        assert not rights & CAT.data_scopes() and "keys:write" in rights
        assert reaches_no_data(svc, policy or TenantPolicy())
    assert CAT.data_scopes() <= principal_rights(svc, [], CAT,
                                                 TenantPolicy(api_users_need_group=False))
    # in a group: the group's reach; a member in no group: its role's (unchanged)
    g = group("contacts:read")
    grouped = principal(Role.ADMIN, kind=PrincipalKind.SERVICE_ACCOUNT)
    grouped.group_ids = [g.id]
    assert principal_rights(grouped, [g], CAT, TenantPolicy()) & CAT.data_scopes() == {
        "contacts:read"}
    assert not reaches_no_data(grouped, TenantPolicy())
    assert CAT.data_scopes() <= principal_rights(principal(Role.ADMIN), [], CAT, TenantPolicy())


@pytest.mark.parametrize(("role", "groups", "data"), [
    (Role.ADMIN, [group("contacts:write")], {"contacts:read", "contacts:write"}),
    (Role.ADMIN, [group("contacts:read")], {"contacts:read"}),
    (Role.ADMIN, [group("contacts:read"), group("calendars:write")],
     {"contacts:read", "calendars:read", "calendars:write"}),  # the union of the groups
    (Role.MEMBER, [group("payments:write")], {"payments:read", "payments:write"}),
    (Role.READ_ONLY, [group("contacts:write")], {"contacts:read"}),  # role still narrows
    (Role.READ_ONLY, [group()], set()),
])
def test_groups_narrow_data_scopes_only(role: Role, groups: list[Group], data: set[str]) -> None:
    rights = principal_rights(principal(role), groups, CAT)
    assert rights & DATA == data
    mgmt = ADMIN_MGMT if role is Role.ADMIN else MEMBER_MGMT
    assert rights - DATA == mgmt  # groups never touch management rights


@pytest.mark.parametrize("role", list(Role))
def test_a_disabled_principal_has_no_rights(role: Role) -> None:
    assert principal_rights(principal(role, enabled=False), [group("contacts:write")],
                            CAT) == frozenset()


def test_rights_follow_the_catalogue() -> None:
    smaller = Catalogue({k: v for k, v in CAT.entries.items() if not k.startswith("contacts:")})
    rights = principal_rights(principal(Role.ADMIN), [], smaller)
    assert "contacts:read" not in rights and "calendars:read" in rights
    custom = Catalogue(dict(CAT.entries) | {"invoices:write": "Edit invoices"})
    rights = principal_rights(principal(Role.READ_ONLY), [], custom)
    assert "invoices:write" not in rights
    assert "invoices:read" not in rights  # only catalogued scopes are ever held


# -- credential kinds ------------------------------------------------------------------------

def caller(kind: CredentialKind, *scopes: str, tenant: str | None = "loc_1") -> Caller:
    return Caller(kind=kind, scopes=frozenset(scopes), tenant_id=tenant,
                  principal_id="usr_1" if tenant else None, key_id="key_1")


ALL_SCOPES = tuple(sc.default_catalogue())


def test_an_access_token_can_never_hold_a_management_permission() -> None:
    token = caller(CredentialKind.ACCESS_TOKEN, *ALL_SCOPES)
    for permission in PERMISSIONS:
        assert not token.holds(permission), permission
    with pytest.raises(PermissionDenied) as info:
        token.require("keys:write")
    assert info.value.code == "insufficient_scope"
    assert "keys:write" in info.value.message


def test_a_session_can_manage_but_never_verify_or_run_the_platform() -> None:
    session = caller(CredentialKind.SESSION, *ALL_SCOPES)
    assert session.holds("keys:write") and session.holds("tenant:write")
    assert not session.holds("keys:verify")
    assert not session.holds("platform:read")


def test_tenant_keys_hold_what_their_scopes_say() -> None:
    key = caller(CredentialKind.TENANT_KEY, "keys:write")
    assert key.holds("keys:write") and key.holds("keys:read")  # write ⇒ read
    assert not key.holds("members:read")
    assert not key.holds("keys:verify")
    key.require("keys:read")
    with pytest.raises(PermissionDenied):
        key.require("members:write")
    reader = caller(CredentialKind.TENANT_KEY, "keys:read")
    assert not reader.holds("keys:write")


def test_tenant_keys_never_hold_platform_permissions() -> None:
    key = caller(CredentialKind.TENANT_KEY, "platform:write", "platform:read")
    assert not key.holds("platform:read") and not key.holds("platform:write")


def test_unknown_permissions_are_denied() -> None:
    for kind in CredentialKind:
        assert not caller(kind, *ALL_SCOPES).holds("contacts:read")
        assert not caller(kind, *ALL_SCOPES).holds("anything:else")


def test_operator_platform_read_versus_write() -> None:
    reader = caller(CredentialKind.OPERATOR_KEY, "platform:read", tenant=None)
    assert reader.holds("platform:read")
    assert not reader.holds("platform:write")
    assert reader.holds("keys:read") and reader.holds("tenant:read")
    assert not reader.holds("keys:write") and not reader.holds("tenant:write")
    writer = caller(CredentialKind.OPERATOR_KEY, "platform:write", tenant=None)
    assert writer.holds("platform:read") and writer.holds("platform:write")
    assert writer.holds("keys:write") and writer.holds("members:write")
    assert not writer.holds("keys:verify")  # verify needs its own scope
    verifier = caller(CredentialKind.OPERATOR_KEY, "keys:verify", tenant=None)
    assert verifier.holds("keys:verify")
    assert not verifier.holds("keys:read") and not verifier.holds("platform:read")


def test_operator_must_name_a_tenant() -> None:
    op = caller(CredentialKind.OPERATOR_KEY, "platform:write", tenant=None)
    with pytest.raises(PermissionDenied) as info:
        op.tenant_for(None)
    assert info.value.code == "tenant_required"
    with pytest.raises(PermissionDenied):
        op.tenant_for("")
    assert op.tenant_for("loc_2") == "loc_2"


@pytest.mark.parametrize("kind", [CredentialKind.TENANT_KEY, CredentialKind.SESSION,
                                  CredentialKind.ACCESS_TOKEN])
def test_tenant_callers_act_on_their_own_tenant_only(kind: CredentialKind) -> None:
    c = caller(kind, "keys:write")
    assert c.tenant_for(None) == "loc_1"
    assert c.tenant_for("loc_1") == "loc_1"
    with pytest.raises(NotFound):
        c.tenant_for("loc_2")  # another tenant's objects do not exist for this caller


def test_actor_names_the_credential() -> None:
    assert caller(CredentialKind.TENANT_KEY).actor == "key:key_1"
    assert Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                  principal_id="usr_9", tenant_id="loc_1").actor == "principal:usr_9"
    assert SYSTEM.actor == "system"
    assert SYSTEM.holds("platform:write") and SYSTEM.holds("keys:verify")


# -- console accounts outside tenants -----------------------------------------------------------

STAFF = Caller(kind=CredentialKind.OPERATOR_SESSION, scopes=frozenset({"platform:write"}),
               account_id="acc_staff")
DEVELOPER = Caller(kind=CredentialKind.DEVELOPER_SESSION, scopes=frozenset(),
                   account_id="acc_dev")


def test_operator_staff_hold_the_operators_management_rights_but_cannot_verify() -> None:
    assert STAFF.is_operator and STAFF.actor == "account:acc_staff"
    for permission in ("platform:read", "platform:write", "keys:write", "tenant:write",
                       "members:write"):
        assert STAFF.holds(permission), permission
    assert not STAFF.holds("keys:verify")  # a browser session is not a verifier
    assert STAFF.lacks(["contacts:write", "platform:write"]) == []
    assert STAFF.tenant_for("loc_any") == "loc_any"
    with pytest.raises(PermissionDenied):
        STAFF.tenant_for(None)


def test_a_partner_developer_holds_no_management_right_and_no_tenant() -> None:
    assert not DEVELOPER.is_operator
    for permission in PERMISSIONS:
        assert not DEVELOPER.holds(permission), permission
    with pytest.raises(NotFound):
        DEVELOPER.tenant_for(None)
    with pytest.raises(NotFound):
        DEVELOPER.tenant_for("loc_any")


def test_no_scope_lifts_a_member_session_to_the_operator() -> None:
    member = Caller(kind=CredentialKind.SESSION, tenant_id="loc_a",
                    scopes=frozenset({"platform:write", "platform:read", "keys:verify"}))
    assert not member.is_operator
    assert not member.holds("platform:read") and not member.holds("platform:write")
    with pytest.raises(NotFound):
        member.tenant_for("loc_b")
