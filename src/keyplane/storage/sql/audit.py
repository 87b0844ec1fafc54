"""The audit log's store: appends under the chain head's lock (one tenant's entries are
numbered one at a time on PostgreSQL and SQLite), filtered pages, the chain walk for
verification and export, and pruning that leaves a checkpoint."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from keyplane.core.audit_chain import GENESIS, ChainHead, chain_of, seal
from keyplane.core.model import AuditEvent, Page
from keyplane.storage.sql import tables as t

A = t.audit_events.c
H = t.audit_chains.c


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._pending: list[AuditEvent] = []

    # -- appending ------------------------------------------------------------------------------

    def _lock_head(self, chain: str) -> ChainHead:
        """The chain's head, locked until this transaction ends (created on first use).
        SQLite serialises every write transaction already (BEGIN IMMEDIATE)."""
        dialect: Any = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        q = t.audit_chains.select().where(H.chain == chain).with_for_update()
        row = self.conn.execute(q).mappings().first()
        if row is None:
            self.conn.execute(dialect.insert(t.audit_chains).values(
                chain=chain, seq=0, hash=GENESIS, pruned_seq=0, pruned_hash=GENESIS,
            ).on_conflict_do_nothing(index_elements=[H.chain]))
            row = self.conn.execute(q).mappings().one()
        return self._head(row)

    def add(self, event: AuditEvent) -> None:
        """Append ``event`` to its tenant's chain in the caller's transaction. It is written
        when the transaction commits (:meth:`flush`), so the chain head is locked only for the
        last moment of the transaction, after every other lock it takes."""
        self._pending.append(event)

    def flush(self) -> None:
        """Write the entries added in this transaction: each gets its chain's next sequence
        number and its hash (set on the event). Chain heads are locked in one order (sorted),
        so transactions that touch several tenants never deadlock on them."""
        pending, self._pending = self._pending, []
        by_chain: dict[str, list[AuditEvent]] = {}
        for event in pending:
            by_chain.setdefault(chain_of(event.tenant_id), []).append(event)
        for chain in sorted(by_chain):
            head = self._lock_head(chain)
            seq, digest = head.seq, head.hash
            for event in by_chain[chain]:
                seq += 1
                digest = seal(event, seq, digest)
                self.conn.execute(t.audit_events.insert().values(
                    id=event.id, at=event.at, tenant_id=event.tenant_id, actor=event.actor,
                    action=event.action, target=event.target, outcome=event.outcome,
                    ip=event.ip, request_id=event.request_id, details=dict(event.details),
                    credential=event.credential, user_agent=event.user_agent,
                    changes=event.changes, seq=event.seq, prev_hash=event.prev_hash,
                    hash=digest,
                ))
            self.conn.execute(t.audit_chains.update().where(H.chain == chain)
                              .values(seq=seq, hash=digest))

    # -- reading --------------------------------------------------------------------------------

    @staticmethod
    def _build(r: RowMapping) -> AuditEvent:
        return AuditEvent(
            id=r["id"], at=r["at"], tenant_id=r["tenant_id"], actor=r["actor"],
            action=r["action"], target=r["target"], outcome=r["outcome"], ip=r["ip"],
            request_id=r["request_id"], details=dict(r["details"]),
            credential=r["credential"], user_agent=r["user_agent"],
            changes=dict(r["changes"]) if r["changes"] is not None else None,
            seq=r["seq"], prev_hash=r["prev_hash"], hash=r["hash"],
        )

    @staticmethod
    def _head(r: RowMapping) -> ChainHead:
        return ChainHead(chain=r["chain"], seq=int(r["seq"]), hash=r["hash"],
                         pruned_seq=int(r["pruned_seq"]), pruned_hash=r["pruned_hash"])

    def page(self, tenant_id: str | None, *, action: str | None, limit: int,
             cursor: str | None, actor: str | None = None, target: str | None = None,
             since: datetime | None = None, until: datetime | None = None) -> Page[AuditEvent]:
        """Newest first. In one tenant the order is the chain's (the cursor is a sequence
        number, so entries appended meanwhile never shift a page); across tenants, by id."""
        q = t.audit_events.select()
        if action:
            q = q.where(A.action == action)
        if actor:
            q = q.where(A.actor == actor)
        if target:
            q = q.where(A.target == target)
        if since is not None:
            q = q.where(A.at >= since)
        if until is not None:
            q = q.where(A.at < until)
        if cursor and cursor[0] == "s" and cursor[1:].isdigit():
            q = q.where(A.seq < int(cursor[1:]))  # "s<seq>": this tenant's chain order
        elif cursor and cursor[0] == "i":
            q = q.where(A.id < cursor[1:])  # "i<id>": across tenants, by id (time)
        if tenant_id is not None:
            q = q.where(A.tenant_id == tenant_id).order_by(A.seq.desc())
        else:
            q = q.order_by(A.id.desc())
        rows = list(self.conn.execute(q.limit(limit + 1)).mappings())
        items = [self._build(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit and items:
            last = items[-1]
            next_cursor = f"s{last.seq}" if tenant_id is not None else f"i{last.id}"
        return Page(items=items, next_cursor=next_cursor)

    def heads(self, tenant_id: str | None = None, *, every: bool = False) -> list[ChainHead]:
        """One chain's head (``tenant_id``; None: the operator's), or every chain's."""
        q = t.audit_chains.select().order_by(H.chain)
        if not every:
            q = q.where(H.chain == chain_of(tenant_id))
        return [self._head(r) for r in self.conn.execute(q).mappings()]

    def chain(self, head: ChainHead, *, after: int, limit: int) -> list[AuditEvent]:
        """A chain's entries after sequence number ``after``, in order."""
        cond = (A.tenant_id.is_(None) if head.chain == "-" else A.tenant_id == head.chain)
        q = (t.audit_events.select().where(cond, A.seq > after)
             .order_by(A.seq, A.id).limit(limit))
        return [self._build(r) for r in self.conn.execute(q).mappings()]

    # -- retention ------------------------------------------------------------------------------

    def retention(self) -> list[tuple[str, int]]:
        """(tenant id, days) of every tenant that keeps its audit log for a limited time."""
        c = t.tenants.c
        q = (sa.select(c.id, c.audit_retention_days)
             .where(c.audit_retention_days.is_not(None)).order_by(c.id))
        return [(tid, int(days)) for tid, days in self.conn.execute(q)]

    def prune(self, tenant_id: str, before: datetime, now: datetime) -> int:
        """Delete the tenant's oldest entries, up to the last one dated before ``before``;
        the head keeps that entry's sequence number and hash as the checkpoint."""
        chain = chain_of(tenant_id)
        cond = A.tenant_id == tenant_id
        last = self.conn.execute(
            sa.select(A.seq, A.hash).where(cond, A.at < before, A.seq.is_not(None))
            .order_by(A.seq.desc()).limit(1)
        ).first()
        if last is None:
            return 0
        self._lock_head(chain)
        seq, digest = int(last[0]), last[1]
        deleted = self.conn.execute(t.audit_events.delete().where(cond, A.seq <= seq)).rowcount
        self.conn.execute(t.audit_chains.update().where(H.chain == chain)
                          .values(pruned_seq=seq, pruned_hash=digest, pruned_at=now))
        return int(deleted or 0)
