"""Members (people with a role), service accounts (API only) and data-access groups."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

from keyplane.core import ids
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.model import Group, Page, Principal, PrincipalKind, Role, TenantPolicy
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import NO_GROUP_NOTE, Caller, reaches_no_data
from keyplane.core.views import key_view, principal_view
from keyplane.services import validate as v
from keyplane.services.connections import Repos
from keyplane.services.context import Context
from keyplane.services.passwords import MAX_PASSWORD, MIN_PASSWORD, hash_password

LAST_ADMIN = "last_admin"
MAX_NAMED = 1000  # principals named in one read (a page names at most a few dozen)


def _role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValidationError(
            "role must be one of admin, member, read_only", field="role"
        ) from None


def _password(value: Any) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise ValidationError(
            f"password must be a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            field="password",
        )
    return hash_password(value)


def _administers(principal: Principal) -> bool:
    """Counts as one of the tenant's admins: an enabled member with the admin role."""
    return (principal.kind is PrincipalKind.MEMBER and principal.role is Role.ADMIN
            and principal.enabled)



LAST_GROUP_REFUSED = (
    "group_ids: removing the API user's last data-access group would widen its access to every "
    "data scope (the tenant policy api_users_need_group is off); give it another group, or "
    "remove its keys' scopes first")


def leaving_last_group(principal: Principal, policy: TenantPolicy) -> str:
    """What leaving its last data-access group does to a principal, and so to its keys:
    ``no_data`` (an API user under ``api_users_need_group``: it then holds no data scopes),
    ``refused`` (an API user with the policy off: it would reach every data scope, so its last
    group cannot be taken away) or ``widens`` (a member reaches what its role allows)."""
    if principal.kind is not PrincipalKind.SERVICE_ACCOUNT:
        return "widens"
    return "no_data" if policy.api_users_need_group else "refused"


def _refuse_widening(uow: UnitOfWork, principal: Principal) -> None:
    """``principal`` has just lost its last group: refuse when that would widen an API user."""
    tenant = uow.tenants.get(principal.tenant_id)
    if tenant is not None and leaving_last_group(principal, tenant.policy) == "refused":
        raise Conflict(LAST_GROUP_REFUSED, field="group_ids")

class PrincipalService:
    """Members and service accounts.

    Rules kept here: a member's email is unique within its tenant only (the same person may
    belong to several tenants, and adding an address never says whether another tenant has it);
    a new password ends the member's live sessions; the tenant's last enabled admin can be
    neither demoted, disabled nor deleted.
    """

    def __init__(self, ctx: Context, repos: Repos) -> None:
        self.ctx = ctx
        self.repos = repos  # the web-session store, to end sessions when a password changes

    def _keep_an_admin(self, uow: UnitOfWork, before: Principal, *, still_admin: bool,
                       action: str) -> None:
        """Refuse a change that would leave the tenant without an enabled admin.

        The caller holds the tenant row's lock (taken before reading ``before``), so two
        concurrent demotions of the last two admins are serialised and the second one sees
        the first."""
        if not _administers(before) or still_admin:
            return
        if uow.principals.count_admins(before.tenant_id) <= 1:
            raise Conflict(
                f"cannot {action} the tenant's only enabled admin: nobody could administer the "
                "tenant any more; make another member an admin first",
                code=LAST_ADMIN, field={"demote": "role", "disable": "enabled"}.get(action),
            )

    def _lock_tenant(self, uow: UnitOfWork, tid: str) -> None:
        if uow.tenants.get(tid, for_update=True) is None:
            raise NotFound("no such tenant")

    def _end_sessions(self, uow: UnitOfWork, principal: Principal) -> int:
        """A new password ends every live session of the member (they sign in again)."""
        return self.repos(uow).sessions.revoke_for_principal(principal.id, self.ctx.clock.now())

    def _group_ids(self, uow: UnitOfWork, tenant_id: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise ValidationError("group_ids must be a list of group ids", field="group_ids")
        if len(value) > v.MAX_GROUPS:
            raise ValidationError(f"group_ids may hold at most {v.MAX_GROUPS} groups",
                                  field="group_ids")
        found = {g.id for g in uow.groups.get_many(value) if g.tenant_id == tenant_id}
        missing = [g for g in value if g not in found]
        if missing:
            raise NotFound(f"group_ids: no such group {missing[0]!r}", field="group_ids")
        return sorted(set(value))

    def _never_widen(self, uow: UnitOfWork, before: Principal, after: Principal) -> None:
        """Removing an API user's last group narrows its access, never widens it (see
        :func:`leaving_last_group`)."""
        if after.group_ids or not before.group_ids:
            return
        _refuse_widening(uow, after)

    def no_data_note(self, principal: Principal) -> str | None:
        """What the answer to creating or regrouping ``principal`` says when it holds no data
        scopes because it is an API user in no data-access group (else None)."""
        if principal.kind is not PrincipalKind.SERVICE_ACCOUNT or principal.group_ids:
            return None
        with self.ctx.uow(readonly=True) as uow:
            tenant = uow.tenants.get(principal.tenant_id)
        if tenant is None or not reaches_no_data(principal, tenant.policy):
            return None
        return NO_GROUP_NOTE

    def create(
        self, caller: Caller, tenant_id: str | None, kind: PrincipalKind, body: dict[str, Any]
    ) -> Principal:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        member = kind is PrincipalKind.MEMBER
        v.only_fields(
            body,
            ("email", "name", "role", "password", "group_ids")
            if member
            else ("name", "role", "group_ids"),
        )
        email = v.email(body.get("email")) if member else None
        name = v.text(email if body.get("name") is None else body["name"], "name",
                      max_len=v.MAX_NAME)
        role = _role(body.get("role", "member"))
        password_hash = _password(body["password"]) if member and "password" in body else None
        with self.ctx.uow() as uow:
            self._lock_tenant(uow, tid)  # serialises two adds of one email to one tenant
            # only this tenant's members are looked at: another tenant's are none of its business
            if email and uow.principals.get_by_email(tid, email) is not None:
                raise Conflict("a member with this email already exists", field="email")
            principal = Principal(
                id=ids.new_id("usr" if member else "svc"),
                tenant_id=tid,
                kind=kind,
                name=name,
                role=role,
                created_at=self.ctx.clock.now(),
                email=email,
                password_hash=password_hash,
                group_ids=self._group_ids(uow, tid, body.get("group_ids", [])),
            )
            uow.principals.add(principal)
            self.ctx.audit(
                uow, caller, f"{kind.value}.created", principal.id, tenant_id=tid, role=role.value,
                subject=principal_view(principal),
            )
            uow.commit()
        return principal

    def get(self, caller: Caller, tenant_id: str | None, principal_id: str) -> Principal:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            principal = uow.principals.get(tid, principal_id)
        if principal is None:
            raise NotFound("no such member or service account")
        return principal

    def named(self, caller: Caller, tenant_id: str | None,
              principal_ids: Iterable[str]) -> dict[str, Principal]:
        """The tenant's members and API users among ``principal_ids``, by id, in one read
        (for naming the owners and actors on a page; another tenant's ids are left out)."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        ids = {i for i in principal_ids if i}
        if len(ids) > MAX_NAMED:
            raise ValidationError(f"principal_ids: at most {MAX_NAMED} at once",
                                  field="principal_ids")
        if not ids:
            return {}
        with self.ctx.uow(readonly=True) as uow:
            return uow.principals.many(tid, ids)

    def list(
        self,
        caller: Caller,
        tenant_id: str | None,
        *,
        kind: PrincipalKind | None,
        limit: int,
        cursor: str | None,
    ) -> Page[Principal]:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            return uow.principals.page(
                tid, kind=kind.value if kind else None, limit=limit, cursor=cursor
            )

    def update(
        self, caller: Caller, tenant_id: str | None, principal_id: str, body: dict[str, Any]
    ) -> Principal:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        with self.ctx.uow() as uow:
            if "role" in body or "enabled" in body:
                self._lock_tenant(uow, tid)
            principal = uow.principals.get(tid, principal_id)
            if principal is None:
                raise NotFound("no such member or service account")
            before = replace(principal)
            member = principal.kind is PrincipalKind.MEMBER
            v.only_fields(
                body,
                ("name", "role", "enabled", "password", "group_ids")
                if member
                else ("name", "role", "enabled", "group_ids"),
            )
            if "name" in body:
                principal.name = v.text(body["name"], "name", max_len=v.MAX_NAME)
            if "role" in body:
                principal.role = _role(body["role"])
            if "enabled" in body:
                principal.enabled = v.boolean(body["enabled"], "enabled")
            if "password" in body:
                principal.password_hash = _password(body["password"])
            if "group_ids" in body:
                principal.group_ids = self._group_ids(uow, tid, body["group_ids"])
                self._never_widen(uow, before, principal)
            self._keep_an_admin(
                uow, before, still_admin=_administers(principal),
                action="demote" if principal.enabled else "disable",
            )
            uow.principals.update(principal)
            details: dict[str, Any] = {}
            if "password" in body:
                details = {"password_changed": True,
                           "sessions_ended": self._end_sessions(uow, principal)}
            self.ctx.audit(
                uow,
                caller,
                f"{principal.kind.value}.updated",
                principal.id,
                tenant_id=tid,
                fields=sorted(set(body) - {"password"}),
                **details,
                subject=principal_view(principal),
                before=principal_view(before),
            )
            self.ctx.changed(uow, ChangeKind.PRINCIPAL, principal.id)
            uow.commit()
        return principal

    def set_password(self, caller: Caller, tenant_id: str | None, email: Any,
                     password: Any) -> Principal:
        """Reset the password of the tenant's member with this email (the operator's CLI);
        like every password change, it ends the member's sessions."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        address = v.email(email)
        with self.ctx.uow(readonly=True) as uow:
            member = uow.principals.get_by_email(tid, address)
        if member is None or member.kind is not PrincipalKind.MEMBER:
            raise NotFound("no member of this tenant has that email")
        return self.update(caller, tid, member.id, {"password": password})

    def delete(self, caller: Caller, tenant_id: str | None, principal_id: str) -> None:
        """Remove a principal; its keys are revoked in the same transaction."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        with self.ctx.uow() as uow:
            self._lock_tenant(uow, tid)
            principal = uow.principals.get(tid, principal_id)
            if principal is None:
                raise NotFound("no such member or service account")
            self._keep_an_admin(uow, principal, still_admin=False, action="delete")
            now = self.ctx.clock.now()
            revoked = []
            for key_id in uow.keys.ids_for_owner(principal.id):
                key = uow.keys.get(tid, key_id, for_update=True)
                if key is not None and key.revoked_at is None:
                    key.revoked_at = now
                    key.updated_at = now
                    uow.keys.update(key)
                    revoked.append(key_id)
                    self.ctx.audit(uow, caller, "key.revoked", key_id, tenant_id=tid,
                                   reason="owner_deleted", subject=key_view(key))
                    self.ctx.changed(uow, ChangeKind.KEY, key_id)
            uow.principals.delete(tid, principal.id)
            self.ctx.audit(
                uow,
                caller,
                f"{principal.kind.value}.deleted",
                principal.id,
                tenant_id=tid,
                revoked_keys=revoked,
                subject=principal_view(principal),
            )
            self.ctx.changed(uow, ChangeKind.PRINCIPAL, principal.id)
            uow.commit()


class GroupService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _scopes(self, value: Any) -> list[str]:
        cat = self.ctx.catalogue()
        scopes = v.scope_list(value, cat)
        management = [s for s in scopes if s not in cat.data_scopes()]
        if management:
            raise ValidationError(
                f"scopes: groups limit data access; {management[0]!r} is a management scope",
                field="scopes",
            )
        return scopes

    def create(self, caller: Caller, tenant_id: str | None, body: dict[str, Any]) -> Group:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        v.only_fields(body, ("name", "description", "scopes"))
        group = Group(
            id=ids.new_id("grp"),
            tenant_id=tid,
            name=v.text(body.get("name"), "name", max_len=v.MAX_NAME),
            description=v.text(
                body.get("description"), "description", max_len=v.MAX_DESCRIPTION, required=False
            ),
            scopes=self._scopes(body.get("scopes", [])),
            created_at=self.ctx.clock.now(),
        )
        with self.ctx.uow() as uow:
            if uow.tenants.get(tid) is None:
                raise NotFound("no such tenant")
            if any(g.name == group.name for g in uow.groups.for_tenant(tid)):
                raise Conflict("a group with this name already exists", field="name")
            uow.groups.add(group)
            self.ctx.audit(uow, caller, "group.created", group.id, tenant_id=tid)
            uow.commit()
        return group

    def list(self, caller: Caller, tenant_id: str | None) -> list[Group]:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            return uow.groups.for_tenant(tid)

    def get(self, caller: Caller, tenant_id: str | None, group_id: str) -> Group:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            group = uow.groups.get(tid, group_id)
        if group is None:
            raise NotFound("no such group")
        return group

    def update(
        self, caller: Caller, tenant_id: str | None, group_id: str, body: dict[str, Any]
    ) -> Group:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        v.only_fields(body, ("name", "description", "scopes"))
        with self.ctx.uow() as uow:
            group = uow.groups.get(tid, group_id)
            if group is None:
                raise NotFound("no such group")
            before = asdict(group)
            if "name" in body:
                group.name = v.text(body["name"], "name", max_len=v.MAX_NAME)
            if "description" in body:
                group.description = v.text(
                    body["description"], "description", max_len=v.MAX_DESCRIPTION, required=False
                )
            if "scopes" in body:
                group.scopes = self._scopes(body["scopes"])
            uow.groups.update(group)
            self.ctx.audit(
                uow, caller, "group.updated", group.id, tenant_id=tid, fields=sorted(body),
                subject=asdict(group), before=before,
            )
            self.ctx.changed(uow, ChangeKind.TENANT, tid)
            uow.commit()
        return group

    def delete(self, caller: Caller, tenant_id: str | None, group_id: str) -> None:
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        with self.ctx.uow() as uow:
            if uow.groups.get(tid, group_id) is None:
                raise NotFound("no such group")
            if uow.groups.member_ids(group_id):
                # removing the last group of a principal would widen its access: refuse
                raise Conflict("the group still has members; remove them from it first")
            uow.groups.delete(tid, group_id)
            self.ctx.audit(uow, caller, "group.deleted", group_id, tenant_id=tid)
            self.ctx.changed(uow, ChangeKind.TENANT, tid)
            uow.commit()

    def members(self, caller: Caller, tenant_id: str | None,
                group_id: str) -> builtins.list[Principal]:
        """The members and service accounts in the group, by name."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            if uow.groups.get(tid, group_id) is None:
                raise NotFound("no such group")
            found = [uow.principals.get(tid, p) for p in uow.groups.member_ids(group_id)]
        return sorted((p for p in found if p is not None), key=lambda p: p.name.lower())

    def member_counts(self, caller: Caller, tenant_id: str | None) -> dict[str, int]:
        """How many principals each of the tenant's groups holds."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            return {g.id: len(uow.groups.member_ids(g.id)) for g in uow.groups.for_tenant(tid)}

    def _membership(self, caller: Caller, tenant_id: str | None, group_id: str,
                    principal_id: str, *, join: bool) -> Principal:
        """Adds the principal to the group or takes it out, in one transaction. A principal in
        no group reaches every data area of its role (an API user under
        ``api_users_need_group``: none), so joining a first group changes its access (and its
        keys'), and leaving its last group does as :func:`leaving_last_group` says: the console
        says so before asking."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:write")
        with self.ctx.uow() as uow:
            if uow.groups.get(tid, group_id) is None:
                raise NotFound("no such group")
            principal = uow.principals.get(tid, principal_id)
            if principal is None:
                raise NotFound("no such member or service account", field="principal_id")
            before = principal_view(principal)
            if join and group_id not in principal.group_ids:
                if len(principal.group_ids) >= v.MAX_GROUPS:
                    raise ValidationError(
                        f"a member or service account may belong to at most {v.MAX_GROUPS} "
                        "groups", field="principal_id")
                principal.group_ids = sorted({*principal.group_ids, group_id})
            elif not join and group_id in principal.group_ids:
                principal.group_ids = [g for g in principal.group_ids if g != group_id]
                if not principal.group_ids:
                    _refuse_widening(uow, principal)
            else:
                return principal  # already so: nothing to record
            uow.principals.update(principal)
            # the same event as any other change of its groups (webhooks see one kind)
            change: dict[str, Any] = {"joined" if join else "left": group_id}
            self.ctx.audit(
                uow, caller, f"{principal.kind.value}.updated", principal.id, tenant_id=tid,
                fields=["group_ids"], subject=principal_view(principal), before=before,
                **change,
            )
            self.ctx.changed(uow, ChangeKind.PRINCIPAL, principal.id)
            uow.commit()
        return principal

    def leaving_effect(self, caller: Caller, tenant_id: str | None,
                       principal: Principal) -> str:
        """:func:`leaving_last_group` under this tenant's policy (the console asks first)."""
        tid = caller.tenant_for(tenant_id)
        caller.require("members:read")
        with self.ctx.uow(readonly=True) as uow:
            tenant = uow.tenants.get(tid)
        if tenant is None:
            raise NotFound("no such tenant")
        return leaving_last_group(principal, tenant.policy)

    def add_member(self, caller: Caller, tenant_id: str | None, group_id: str,
                   principal_id: str) -> Principal:
        return self._membership(caller, tenant_id, group_id, principal_id, join=True)

    def remove_member(self, caller: Caller, tenant_id: str | None, group_id: str,
                      principal_id: str) -> Principal:
        return self._membership(caller, tenant_id, group_id, principal_id, join=False)
