"""The audit log: a tenant sees its own events, the operator sees every tenant's; refused
management calls are recorded here too, aggregated (``services/refusals.py``)."""

from __future__ import annotations

from keyplane.core.model import Page
from keyplane.core.rights import Caller
from keyplane.services.context import Context
from keyplane.services.refusals import RefusalRecorder


class AuditService:
    def __init__(self, ctx: Context, refusals: RefusalRecorder | None = None) -> None:
        self.ctx = ctx
        self.refusals = refusals or RefusalRecorder(ctx)

    def refused(self, caller: Caller, route: str, status: int, code: str,
                target: str | None = None) -> None:
        """A management call this caller was refused (403, or 404 on an id it may not see):
        counted now, written as an aggregated ``authz_fail`` event (no write on the request)."""
        self.refusals.refused(caller, route, status, code, target)

    def list(self, caller: Caller, tenant_id: str | None, *, action: str | None, limit: int,
             cursor: str | None) -> Page:
        if caller.is_operator and not tenant_id:
            caller.require("platform:read")
            tid = None
        else:
            tid = caller.tenant_for(tenant_id)
            caller.require("tenant:read")
        with self.ctx.uow(readonly=True) as uow:
            return uow.audit.page(tid, action=action, limit=limit, cursor=cursor)
