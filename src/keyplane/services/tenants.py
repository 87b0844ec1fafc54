"""Tenants and their key policy. Creating and listing tenants is for the operator."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from keyplane.core import hygiene as hy
from keyplane.core import ids
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import NotFound, ValidationError
from keyplane.core.model import LeakAction, Page, Tenant, TenantPolicy
from keyplane.core.rights import Caller
from keyplane.services import validate as v
from keyplane.services.context import Context

MAX_DAYS = v.MAX_DAYS
POLICY_FIELDS = ("default_expiry_days", "max_expiry_days", "allow_non_expiring", "allowed_ips",
                 "require_tls_default", "leaked_key_action", "revoke_unused_after_days",
                 "api_users_need_group", "audit_retention_days", "require_admin_two_factor")
MIN_AUDIT_RETENTION_DAYS = 1
MAX_AUDIT_RETENTION_DAYS = 36500


def _apply_policy(policy: TenantPolicy, body: dict[str, Any]) -> None:
    """Set the policy fields ``body`` names; an error names the field as the API nests it
    (``policy.<name>``)."""
    def field(name: str) -> str:
        return f"policy.{name}"

    if "default_expiry_days" in body:
        policy.default_expiry_days = v.integer(
            body["default_expiry_days"], field("default_expiry_days"), minimum=1,
            maximum=MAX_DAYS)
    if "max_expiry_days" in body:
        value = body["max_expiry_days"]
        policy.max_expiry_days = None if value is None else v.integer(
            value, field("max_expiry_days"), minimum=1, maximum=MAX_DAYS
        )
    if "allow_non_expiring" in body:
        policy.allow_non_expiring = v.boolean(body["allow_non_expiring"],
                                              field("allow_non_expiring"))
    if "allowed_ips" in body:
        policy.allowed_ips = v.ip_list(body["allowed_ips"], field("allowed_ips"))
    if "require_tls_default" in body:
        policy.require_tls_default = v.boolean(body["require_tls_default"],
                                               field("require_tls_default"))
    if "api_users_need_group" in body:
        policy.api_users_need_group = v.boolean(body["api_users_need_group"],
                                                field("api_users_need_group"))
    if "require_admin_two_factor" in body:
        policy.require_admin_two_factor = v.boolean(body["require_admin_two_factor"],
                                                    field("require_admin_two_factor"))
    if "leaked_key_action" in body:
        value = body["leaked_key_action"]
        if value not in tuple(LeakAction):
            raise ValidationError(f"{field('leaked_key_action')} must be 'revoke' or 'lock'",
                                  field=field("leaked_key_action"))
        policy.leaked_key_action = LeakAction(value)
    if "revoke_unused_after_days" in body:
        value = body["revoke_unused_after_days"]
        policy.revoke_unused_after_days = None if value is None else v.integer(
            value, field("revoke_unused_after_days"), minimum=hy.MIN_REVOKE_UNUSED_DAYS,
            maximum=hy.MAX_REVOKE_UNUSED_DAYS)
    if "audit_retention_days" in body:
        value = body["audit_retention_days"]
        policy.audit_retention_days = None if value is None else v.integer(
            value, field("audit_retention_days"), minimum=MIN_AUDIT_RETENTION_DAYS,
            maximum=MAX_AUDIT_RETENTION_DAYS)
    if policy.max_expiry_days is not None and policy.default_expiry_days > policy.max_expiry_days:
        raise ValidationError(f"{field('default_expiry_days')} must not exceed "
                              "max_expiry_days", field=field("default_expiry_days"))


def _view(tenant: Tenant) -> dict[str, Any]:
    """The tenant as its audit entries record it (a copy: later edits do not reach it)."""
    view: dict[str, Any] = json.loads(json.dumps(asdict(tenant), default=str))
    return view


class TenantService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, caller: Caller, body: dict[str, Any]) -> Tenant:
        caller.require("platform:write")
        v.only_fields(body, ("name", "policy"))
        name = v.text(body.get("name"), "name", max_len=v.MAX_NAME)
        policy = TenantPolicy()
        pol = body.get("policy") or {}
        if not isinstance(pol, dict):
            raise ValidationError("policy must be an object", field="policy")
        v.only_fields(pol, POLICY_FIELDS)
        _apply_policy(policy, pol)
        tenant = Tenant(id=ids.new_id("loc"), name=name, created_at=self.ctx.clock.now(),
                        policy=policy)
        with self.ctx.uow() as uow:
            uow.tenants.add(tenant)
            self.ctx.audit(uow, caller, "tenant.created", tenant.id, tenant_id=tenant.id,
                           name=name)
            uow.commit()
        return tenant

    def get(self, caller: Caller, tenant_id: str) -> Tenant:
        tid = caller.tenant_for(tenant_id)
        caller.require("tenant:read")
        with self.ctx.uow(readonly=True) as uow:
            tenant = uow.tenants.get(tid)
        if tenant is None:
            raise NotFound("no such tenant")
        return tenant

    def list(self, caller: Caller, *, limit: int, cursor: str | None) -> Page[Tenant]:
        caller.require("platform:read")
        with self.ctx.uow(readonly=True) as uow:
            return uow.tenants.page(limit=limit, cursor=cursor)

    def update(self, caller: Caller, tenant_id: str, body: dict[str, Any]) -> Tenant:
        tid = caller.tenant_for(tenant_id)
        caller.require("tenant:write")
        v.only_fields(body, ("name", "enabled", "policy"))
        if "enabled" in body:
            caller.require("platform:write")  # suspending a tenant is the operator's call
        with self.ctx.uow() as uow:
            tenant = uow.tenants.get(tid)
            if tenant is None:
                raise NotFound("no such tenant")
            before = _view(tenant)
            if "name" in body:
                tenant.name = v.text(body["name"], "name", max_len=v.MAX_NAME)
            if "enabled" in body:
                tenant.enabled = v.boolean(body["enabled"], "enabled")
            if "policy" in body:
                pol = body["policy"]
                if not isinstance(pol, dict):
                    raise ValidationError("policy must be an object", field="policy")
                v.only_fields(pol, POLICY_FIELDS)
                _apply_policy(tenant.policy, pol)
            uow.tenants.update(tenant)
            self.ctx.audit(uow, caller, "tenant.updated", tid, tenant_id=tid,
                           fields=sorted(body), subject=_view(tenant), before=before)
            self.ctx.changed(uow, ChangeKind.TENANT, tid)
            uow.commit()
        return tenant
