"""The audit log: a tenant sees its own events, the operator sees every tenant's; refused
management calls are recorded here too, aggregated (``services/refusals.py``).

Entries are hash-chained per tenant (``core/audit_chain.py``): :meth:`AuditService.verify`
walks the chains and says where one was edited, cut or reordered; :meth:`AuditService.prune`
applies each tenant's retention and leaves a checkpoint so the rest still verifies."""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from keyplane.core.audit_chain import Break, ChainHead, verify
from keyplane.core.errors import NotFound, ValidationError
from keyplane.core.model import AuditEvent, Page
from keyplane.core.rights import SYSTEM, Caller
from keyplane.services.context import Context
from keyplane.services.refusals import RefusalRecorder

BATCH = 500
RETENTION = replace(SYSTEM, name="policy:audit_retention")
_ACTION = re.compile(r"\A[a-z0-9_]+(\.[a-z0-9_]+){0,2}\Z")  # at most 60 characters
_TOKEN = re.compile(r"\A[A-Za-z0-9_:.@\-]{1,80}\Z")


@dataclass(frozen=True)
class AuditFilter:
    """What ``GET /v1/audit-events`` narrows the log to (each optional)."""

    action: str | None = None
    actor: str | None = None
    target: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass
class ChainReport:
    tenant_id: str | None
    entries: int  # entries checked (after the pruning checkpoint)
    head_seq: int
    pruned_seq: int


@dataclass
class Verification:
    chains: list[ChainReport] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _checked(flt: AuditFilter) -> AuditFilter:
    if flt.action is not None and (len(flt.action) > 60 or not _ACTION.match(flt.action)):
        raise ValidationError("action must be an action name such as key.created",
                              field="action")
    for name in ("actor", "target"):
        value = getattr(flt, name)
        if value is not None and not _TOKEN.match(value):
            raise ValidationError(f"{name} must be 1 to 80 letters, digits or _:.@-",
                                  field=name)
    since, until = _utc(flt.since), _utc(flt.until)  # until <= since: an empty window
    return AuditFilter(action=flt.action, actor=flt.actor, target=flt.target, since=since,
                       until=until)


#: the paging cursor: ``s<sequence number>`` in one tenant's log, ``i<entry id>`` across
#: tenants; clients pass ``next_cursor`` back as given
CURSOR = re.compile(r"\A(s[0-9]{1,18}|i[A-Za-z0-9_]{1,40})\Z")
CURSOR_PATTERN = CURSOR.pattern.replace("\\A", "^").replace("\\Z", "$")


def _cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    if not CURSOR.match(cursor):
        raise ValidationError("cursor is not one this list returned (use next_cursor as "
                              "given)", field="cursor")
    return cursor


class AuditService:
    def __init__(self, ctx: Context, refusals: RefusalRecorder | None = None) -> None:
        self.ctx = ctx
        self.refusals = refusals or RefusalRecorder(ctx)

    def refused(self, caller: Caller, route: str, status: int, code: str,
                target: str | None = None) -> None:
        """A management call this caller was refused (403, or 404 on an id it may not see):
        counted now, written as an aggregated ``authz_fail`` event (no write on the request)."""
        self.refusals.refused(caller, route, status, code, target)

    def list(self, caller: Caller, tenant_id: str | None, *, action: str | None = None,
             limit: int, cursor: str | None, where: AuditFilter | None = None) -> Page[AuditEvent]:
        """Newest first, filtered; ``next_cursor`` is opaque and stable while entries are
        appended (a tenant's pages follow its chain's sequence numbers)."""
        if caller.is_operator and not tenant_id:
            caller.require("platform:read")
            tid = None
        else:
            tid = caller.tenant_for(tenant_id)
            caller.require("tenant:read")
        flt = _checked(where or AuditFilter())
        if action is not None:
            flt = AuditFilter(action=action, actor=flt.actor, target=flt.target,
                              since=flt.since, until=flt.until)
            flt = _checked(flt)
        with self.ctx.uow(readonly=True) as uow:
            return uow.audit.page(tid, action=flt.action, limit=limit, cursor=_cursor(cursor),
                                  actor=flt.actor, target=flt.target, since=flt.since,
                                  until=flt.until)

    # -- the operator's tools (``keyplane audit ...``) -----------------------------------------

    def _heads(self, tenant_id: str | None, every: bool) -> builtins.list[ChainHead]:
        with self.ctx.uow(readonly=True) as uow:
            if every:
                return uow.audit.heads(every=True)
            if tenant_id is not None and uow.tenants.get(tenant_id) is None:
                heads = uow.audit.heads(tenant_id)
                if not heads:
                    raise NotFound("no such tenant")
                return heads
            return uow.audit.heads(tenant_id)

    def entries(self, head: ChainHead) -> Iterator[AuditEvent]:
        """One chain's entries in sequence order, read in batches."""
        after = head.pruned_seq
        while True:
            with self.ctx.uow(readonly=True) as uow:
                batch = uow.audit.chain(head, after=after, limit=BATCH)
            yield from batch
            if len(batch) < BATCH:
                return
            after = max(after, *(e.seq or 0 for e in batch))

    def verify(self, tenant_id: str | None = None, *, every: bool = True) -> Verification:
        """Walk every chain (or one tenant's; ``every=False`` with no tenant: the operator's)
        and report each break: where (tenant, sequence, entry id) and what is wrong."""
        result = Verification()
        for head in self._heads(tenant_id, every and tenant_id is None):
            count, breaks = verify(head, self.entries(head))
            result.chains.append(ChainReport(tenant_id=None if head.chain == "-" else head.chain,
                                             entries=count, head_seq=head.seq,
                                             pruned_seq=head.pruned_seq))
            result.breaks.extend(breaks)
        return result

    def export(self, tenant_id: str | None = None) -> Iterator[AuditEvent]:
        """Every entry still kept, chain by chain, in sequence order (one tenant's or all)."""
        for head in self._heads(tenant_id, tenant_id is None):
            yield from self.entries(head)

    def prune(self, tenant_id: str | None = None) -> dict[str, int]:
        """Apply retention (``policy.audit_retention_days``): each tenant with one loses the
        entries older than that; its chain keeps a checkpoint. Returns entries deleted per
        tenant."""
        now = self.ctx.clock.now()
        deleted: dict[str, int] = {}
        with self.ctx.uow(readonly=True) as uow:
            policies = uow.audit.retention()
        for tid, days in policies:
            if tenant_id is not None and tid != tenant_id:
                continue
            with self.ctx.uow() as uow:
                count = uow.audit.prune(tid, now - timedelta(days=days), now)
                if count:
                    head = uow.audit.heads(tid)[0]
                    self.ctx.audit(uow, RETENTION, "audit.pruned", tid, tenant_id=tid,
                                   deleted=count, checkpoint_seq=head.pruned_seq,
                                   checkpoint_hash=head.pruned_hash, retention_days=days)
                uow.commit()
            if count:
                deleted[tid] = count
        return deleted
