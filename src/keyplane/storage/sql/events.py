"""Storage for the events Keyplane raises itself and for automations (migration ``0009_events``).

- ``key_reminders``: one row per expiry reminder sent, unique on (key, threshold, expires_at).
  The row is inserted in the transaction that writes the event to the outbox, so on every
  worker and host each reminder is sent once; a new ``expires_at`` (renewal, rotation) is a new
  row, so a renewed key is reminded again.
- ``key_networks``: the networks each key was seen from (bounded per key, most recent kept).
- ``key_denial_windows``: refusals per key and fixed window, added to by every worker's usage flush;
  ``alerted_at`` is set once per window by whichever flush crosses the threshold.
- ``automations``: a tenant's rules that send product events to its webhooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from keyplane.core.events import Automation
from keyplane.core.model import ApiKey, Page
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql import tables as t
from keyplane.storage.sql.hygiene import SqlHygiene
from keyplane.storage.sql.repositories import SqlKeys, _newest_first, _page
from keyplane.storage.sql.tables import ID, UTCDateTime, metadata

key_reminders = sa.Table(
    "key_reminders",
    metadata,
    sa.Column("key_id", ID, sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("threshold_days", sa.Integer, primary_key=True),  # 14, 7, 1; 0: key.expired
    sa.Column("expires_at", UTCDateTime, primary_key=True),
    sa.Column("sent_at", UTCDateTime, nullable=False),
    sa.Column("sent_by", sa.String(80), nullable=False),  # the instance that sent it
)

key_networks = sa.Table(
    "key_networks",
    metadata,
    sa.Column("key_id", ID, sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("network", sa.String(50), primary_key=True),
    sa.Column("last_address", sa.String(64), nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
)

# no foreign key: a flush must never fail because its key was just deleted with its tenant
key_denial_windows = sa.Table(
    "key_denial_windows",
    metadata,
    sa.Column("key_id", ID, primary_key=True),
    sa.Column("window_start", UTCDateTime, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("alerted_at", UTCDateTime, nullable=True),
)

automations = sa.Table(
    "automations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("event", sa.String(90), nullable=False),
    sa.Column("key_id", ID, nullable=True),
    sa.Column("principal_id", ID, nullable=True),
    sa.Column("app_id", ID, nullable=True),
    sa.Column("webhook_ids", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.String(80), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_automations_tenant", "tenant_id", "id"),
)

K = t.api_keys.c
R = key_reminders.c
N = key_networks.c
DN = key_denial_windows.c
A = automations.c


def _dialect(conn: Connection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _automation(r: RowMapping) -> Automation:
    return Automation(
        id=r["id"], tenant_id=r["tenant_id"], name=r["name"], description=r["description"],
        event=r["event"], key_id=r["key_id"], principal_id=r["principal_id"],
        app_id=r["app_id"], webhook_ids=list(r["webhook_ids"]), enabled=r["enabled"],
        created_by=r["created_by"], created_at=r["created_at"], updated_at=r["updated_at"])


def _automation_row(a: Automation) -> dict[str, Any]:
    return {"id": a.id, "tenant_id": a.tenant_id, "name": a.name,
            "description": a.description, "event": a.event, "key_id": a.key_id,
            "principal_id": a.principal_id, "app_id": a.app_id,
            "webhook_ids": list(a.webhook_ids), "enabled": a.enabled,
            "created_by": a.created_by, "created_at": a.created_at, "updated_at": a.updated_at}


class SqlEvents:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- expiry reminders --------------------------------------------------------------------

    def expiring(self, threshold: int, after: datetime, until: datetime,
                 limit: int) -> list[str]:
        """Ids of live tenant keys (of enabled tenants) expiring in (after, until] that have
        no ``threshold`` reminder for that expiry yet."""
        sent = sa.exists().where(R.key_id == K.id, R.threshold_days == threshold,
                                 R.expires_at == K.expires_at)
        q = (sa.select(K.id)
             .select_from(t.api_keys.join(t.tenants, t.tenants.c.id == K.tenant_id))
             .where(K.revoked_at.is_(None), K.expires_at.is_not(None), K.expires_at > after,
                    K.expires_at <= until, t.tenants.c.enabled.is_(True), ~sent)
             .order_by(K.expires_at, K.id).limit(limit))
        return [i for (i,) in self.conn.execute(q)]

    def claim_reminder(self, key_id: str, threshold: int, expires_at: datetime,
                       now: datetime, owner: str) -> bool:
        """Records the reminder as sent; False when it already was (by anyone). Concurrent
        claimers wait on the unique key until the first commits, then find it taken."""
        stmt = (_dialect(self.conn).insert(key_reminders)
                .values(key_id=key_id, threshold_days=threshold, expires_at=expires_at,
                        sent_at=now, sent_by=owner[:80])
                .on_conflict_do_nothing(index_elements=[R.key_id, R.threshold_days,
                                                        R.expires_at])
                .returning(R.key_id))
        # RETURNING, not rowcount: the PostgreSQL driver reports -1 for this statement
        return self.conn.execute(stmt).first() is not None

    def claim_job(self, job: str, owner: str, now: datetime, until: datetime) -> bool:
        """The periodic job's lease (``job_leases``, shared with the hygiene job)."""
        return SqlHygiene(self.conn).claim(job, owner, now, until)

    # -- where keys are used from ------------------------------------------------------------

    def known_networks(self, key_ids: Iterable[str]) -> dict[str, set[str]]:
        ids = sorted(set(key_ids))
        out: dict[str, set[str]] = {k: set() for k in ids}
        for start in range(0, len(ids), 500):
            q = sa.select(N.key_id, N.network).where(N.key_id.in_(ids[start:start + 500]))
            for key_id, network in self.conn.execute(q):
                out[key_id].add(network)
        return out

    def keys_by_id(self, key_ids: Iterable[str]) -> dict[str, ApiKey]:
        ids = sorted(set(key_ids))
        out: dict[str, ApiKey] = {}
        for start in range(0, len(ids), 500):
            q = t.api_keys.select().where(K.id.in_(ids[start:start + 500]))
            for r in self.conn.execute(q).mappings():
                out[r["id"]] = SqlKeys._build(r)
        return out

    def seen(self, key_id: str, network: str, address: str, at: datetime) -> bool:
        """Records a use from ``network``; True when the key had not been seen from it (this
        call inserted it: once across workers)."""
        dialect = _dialect(self.conn)
        stmt = dialect.insert(key_networks).values(
            key_id=key_id, network=network, last_address=address, first_seen_at=at,
            last_seen_at=at)
        inserted = self.conn.execute(stmt.on_conflict_do_nothing(
            index_elements=[N.key_id, N.network]).returning(N.key_id)).first() is not None
        if not inserted:
            self.conn.execute(key_networks.update()
                              .where(N.key_id == key_id, N.network == network,
                                     N.last_seen_at < at)
                              .values(last_seen_at=at, last_address=address))
        return bool(inserted)

    def forget_networks(self, key_id: str, keep: int) -> list[str]:
        """Keeps the ``keep`` most recently seen networks of a key; returns those dropped."""
        newest = (sa.select(N.network).where(N.key_id == key_id)
                  .order_by(N.last_seen_at.desc(), N.network).limit(keep))
        done = self.conn.execute(key_networks.delete().where(
            N.key_id == key_id, N.network.not_in(newest.scalar_subquery()))
            .returning(N.network))
        return [n for (n,) in done]

    # -- refusal bursts ----------------------------------------------------------------------

    def add_denials(self, counts: dict[str, int], window_start: datetime) -> dict[str, int]:
        """Adds refusals to each key's count for the window; returns the new totals."""
        if not counts:
            return {}
        dialect = _dialect(self.conn)
        out: dict[str, int] = {}
        for key_id in sorted(counts):  # a stable order: concurrent flushes never deadlock
            stmt = dialect.insert(key_denial_windows).values(
                key_id=key_id, window_start=window_start, count=counts[key_id])
            stmt = stmt.on_conflict_do_update(
                index_elements=[DN.key_id, DN.window_start],
                set_={"count": DN.count + stmt.excluded.count}).returning(DN.count)
            out[key_id] = int(self.conn.execute(stmt).scalar_one())
        return out

    def alert_denials(self, key_id: str, window_start: datetime, now: datetime) -> bool:
        """Marks the window as alerted; True for the one caller that did."""
        done = self.conn.execute(key_denial_windows.update().where(
            DN.key_id == key_id, DN.window_start == window_start, DN.alerted_at.is_(None))
            .values(alerted_at=now))
        return bool(done.rowcount == 1)

    def prune_denials(self, before: datetime) -> None:
        self.conn.execute(key_denial_windows.delete().where(DN.window_start < before))

    # -- automations -------------------------------------------------------------------------

    def add_automation(self, a: Automation) -> None:
        self.conn.execute(automations.insert().values(**_automation_row(a)))

    def automation(self, tenant_id: str, automation_id: str, *,
                   for_update: bool = False) -> Automation | None:
        q = automations.select().where(A.id == automation_id, A.tenant_id == tenant_id)
        if for_update:
            q = q.with_for_update()
        row = self.conn.execute(q).mappings().first()
        return _automation(row) if row else None

    def update_automation(self, a: Automation) -> None:
        row = _automation_row(a)
        row.pop("id")
        self.conn.execute(automations.update().where(A.id == a.id).values(**row))

    def delete_automation(self, tenant_id: str, automation_id: str) -> None:
        self.conn.execute(automations.delete().where(A.id == automation_id,
                                                     A.tenant_id == tenant_id))

    def automations(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[Automation]:
        q = _newest_first(automations.select().where(A.tenant_id == tenant_id), A.id, cursor,
                          limit)
        return _page(list(self.conn.execute(q).mappings()), limit, _automation)

    def enabled_automations(self, tenant_id: str) -> list[Automation]:
        q = (automations.select().where(A.tenant_id == tenant_id, A.enabled.is_(True))
             .order_by(A.id))
        return [_automation(r) for r in self.conn.execute(q).mappings()]


def events_repo(uow: UnitOfWork) -> SqlEvents:
    conn: Connection = getattr(uow, "connection")  # noqa: B009 - SqlUnitOfWork only
    return SqlEvents(conn)
