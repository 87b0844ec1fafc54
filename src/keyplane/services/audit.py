"""Reading the audit log: a tenant sees its own events, the operator sees every tenant's."""

from __future__ import annotations

from keyplane.core.model import Page
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services.context import Context


class AuditService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def list(self, caller: Caller, tenant_id: str | None, *, action: str | None, limit: int,
             cursor: str | None) -> Page:
        if caller.kind is CredentialKind.OPERATOR_KEY and not tenant_id:
            caller.require("platform:read")
            tid = None
        else:
            tid = caller.tenant_for(tenant_id)
            caller.require("tenant:read")
        with self.ctx.uow(readonly=True) as uow:
            return uow.audit.page(tid, action=action, limit=limit, cursor=cursor)
