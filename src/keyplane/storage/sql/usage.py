"""Per-key usage counts by hour and outcome (``key_usage``), written by batched upserts that add
to what is stored, so that flushes from several workers never overwrite each other."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from keyplane.core import ids
from keyplane.core.model import Denial
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql.outages import outage_as_unavailable
from keyplane.storage.sql.tables import ID, UTCDateTime, api_keys, metadata

# no foreign key to api_keys: OAuth access tokens are counted too, and a flush must never fail
# because its key has just been deleted with its tenant
key_usage = sa.Table(
    "key_usage",
    metadata,
    sa.Column("key_id", ID, primary_key=True),
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("outcome", sa.String(32), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)


# a key's newest refused verifications with their reason (services/usage.py bounds them)
key_denials = sa.Table(
    "key_denials",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("key_id", ID, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("ip", sa.String(45), nullable=True),
    sa.Index("ix_key_denials_key_id_at", "key_id", "at"),
)
PRUNE_BATCH = 500  # keys pruned per statement


def _connection(uow: UnitOfWork) -> Connection:
    conn: Connection = getattr(uow, "connection")  # noqa: B009 - SqlUnitOfWork only
    return conn


class SqlUsageStore:
    def add(self, uow: UnitOfWork, counts: Mapping[tuple[str, datetime, str], int]) -> None:
        if not counts:
            return
        conn = _connection(uow)
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        # a stable order: concurrent flushes take row locks in the same order (no deadlock)
        rows = [{"key_id": k, "hour": h, "outcome": o, "count": n}
                for (k, h, o), n in sorted(counts.items()) if n]
        stmt = dialect.insert(key_usage)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key_usage.c.key_id, key_usage.c.hour, key_usage.c.outcome],
            set_={"count": key_usage.c.count + stmt.excluded.count},
        )
        conn.execute(stmt, rows)

    def series(self, uow: UnitOfWork, key_id: str, start: datetime,
               end: datetime) -> list[tuple[datetime, str, int]]:
        u = key_usage.c
        q = (sa.select(u.hour, u.outcome, u.count)
             .where(u.key_id == key_id, u.hour >= start, u.hour < end)
             .order_by(u.hour, u.outcome))
        return [(h, o, int(n)) for h, o, n in _connection(uow).execute(q)]


    def add_denials(self, uow: UnitOfWork, denials: Mapping[str, list[Denial]],
                    keep: int) -> None:
        """Adds the refusals, then keeps only each key's newest ``keep``."""
        # ids that sort in the order given: two refusals at the same instant keep their order
        base = int(time.time() * 1000)
        rows = [{"id": ids.new_id("dny", now_ms=base + i), "key_id": k, "at": d.at,
                 "outcome": d.outcome, "reason": d.reason, "ip": d.ip}
                for i, (k, d) in enumerate((k, d) for k in sorted(denials) for d in denials[k])]
        if not rows:
            return
        conn = _connection(uow)
        conn.execute(key_denials.insert(), rows)
        d = key_denials.c
        keys = sorted(denials)
        for i in range(0, len(keys), PRUNE_BATCH):
            batch = keys[i:i + PRUNE_BATCH]
            ranked = (sa.select(d.id, sa.func.row_number().over(
                partition_by=d.key_id, order_by=(d.at.desc(), d.id.desc())).label("n"))
                .where(d.key_id.in_(batch)).subquery())
            old = sa.select(ranked.c.id).where(ranked.c.n > keep)
            conn.execute(key_denials.delete().where(d.id.in_(old)))

    def denials(self, uow: UnitOfWork, key_id: str, limit: int) -> list[Denial]:
        d = key_denials.c
        q = (sa.select(d.at, d.outcome, d.reason, d.ip).where(d.key_id == key_id)
             .order_by(d.at.desc(), d.id.desc()).limit(limit))
        return [Denial(at, outcome, reason, ip)
                for at, outcome, reason, ip in _connection(uow).execute(q)]


class SqlQuotaStore:
    """Usage quotas ("remaining uses"): one atomic decrement per admitted verification, exact
    across workers and hosts (``UPDATE … SET remaining_uses = remaining_uses - 1 WHERE
    remaining_uses > 0``), durable across restarts and independent of Redis."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def take(self, key_id: str) -> tuple[bool, int | None]:
        """(admitted, uses left afterwards); a key without a quota is always admitted."""
        k = api_keys.c
        with outage_as_unavailable(), self.engine.begin() as conn:
            left = conn.execute(
                api_keys.update()
                .where(k.id == key_id, k.remaining_uses > 0)
                .values(remaining_uses=k.remaining_uses - 1)
                .returning(k.remaining_uses)
            ).scalar()
            if left is not None:
                return True, int(left)
            current = conn.execute(
                sa.select(k.remaining_uses).where(k.id == key_id)
            ).scalar()
        if current is None:  # the quota was removed (or the key is gone: loaders decide)
            return True, None
        return False, 0
