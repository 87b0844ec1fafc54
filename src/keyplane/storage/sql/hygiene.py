"""Storage for key hygiene (migration ``0008_hygiene``): reading a tenant's live keys with their
owner's state, the unused-key policy's warnings (``api_keys.unused_warned_at``) and job leases
(``job_leases``: one row per periodic job, so that one instance among many runs it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from keyplane.core.model import ApiKey
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql import tables as t
from keyplane.storage.sql.tables import UTCDateTime, metadata

job_leases = sa.Table(
    "job_leases",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Column("owner", sa.String(80), nullable=True),
    sa.Column("last_run_at", UTCDateTime, nullable=True),
)

K = t.api_keys.c
P = t.principals.c


class SqlHygiene:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def live_keys(self, tenant_id: str, *, cursor: str | None,
                  limit: int) -> list[tuple[ApiKey, bool]]:
        """A tenant's keys that are not revoked, newest first from ``cursor``, each with
        whether its owner is enabled (a key whose owner is gone counts as disabled)."""
        q = (sa.select(t.api_keys, sa.func.coalesce(P.enabled, False).label("owner_enabled"))
             .select_from(t.api_keys.outerjoin(t.principals, P.id == K.owner_id))
             .where(K.tenant_id == tenant_id, K.revoked_at.is_(None)))
        if cursor:
            q = q.where(K.id < cursor)
        q = q.order_by(K.id.desc()).limit(limit)
        # imported here: tables.py loads this module for its tables, and repositories.py
        # needs tables.py, so a module-level import would make the import order matter
        from keyplane.storage.sql.repositories import SqlKeys

        return [(SqlKeys._build(r), bool(r["owner_enabled"]))
                for r in self.conn.execute(q).mappings()]

    def scopes_used(self, key_ids: list[str], since: datetime) -> dict[str, set[str]]:
        """The scopes each key's valid uses needed since ``since`` (per-scope usage)."""
        from keyplane.storage.sql.imports import SqlImports  # imported here: see above

        return SqlImports(self.conn).scopes_used(key_ids, since)

    def policy_tenants(self) -> list[tuple[str, int]]:
        """Enabled tenants with ``revoke_unused_after_days`` set: (id, days)."""
        c = t.tenants.c
        q = (sa.select(c.id, c.revoke_unused_after_days)
             .where(c.revoke_unused_after_days.is_not(None), c.enabled.is_(True))
             .order_by(c.id))
        return [(i, int(d)) for i, d in self.conn.execute(q)]

    def idle_keys(self, tenant_id: str, *, warn_since: datetime, revoke_since: datetime,
                  warned_before: datetime) -> list[str]:
        """Live keys of a tenant the unused-key policy may act on: idle (not used, or if
        never used not created) since ``warn_since`` and not warned since; or idle since
        ``revoke_since`` and warned before ``warned_before`` (and since they went idle)."""
        activity = sa.func.coalesce(K.last_used_at, K.created_at)
        warned = K.unused_warned_at
        q = (sa.select(K.id).where(
            K.tenant_id == tenant_id, K.revoked_at.is_(None), activity <= warn_since,
            sa.or_(warned.is_(None), warned < activity,
                   sa.and_(activity <= revoke_since, warned <= warned_before)))
            .order_by(K.id))
        return [i for (i,) in self.conn.execute(q)]

    def warned_at(self, key_id: str) -> datetime | None:
        value: datetime | None = self.conn.execute(
            sa.select(K.unused_warned_at).where(K.id == key_id)).scalar()
        return value

    def set_warned(self, key_id: str, at: datetime) -> None:
        self.conn.execute(t.api_keys.update().where(K.id == key_id).values(unused_warned_at=at))

    def claim(self, job: str, owner: str, now: datetime, until: datetime) -> bool:
        """Takes the job's lease until ``until`` unless another holder's lease still runs.
        Concurrent claimers serialise on the row (PostgreSQL re-checks the condition after
        the winner commits; SQLite's writes are serialised), so exactly one wins."""
        dialect: Any = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        self.conn.execute(dialect.insert(job_leases).values(name=job)
                          .on_conflict_do_nothing(index_elements=[job_leases.c.name]))
        j = job_leases.c
        done = self.conn.execute(
            job_leases.update()
            .where(j.name == job, sa.or_(j.lease_until.is_(None), j.lease_until <= now))
            .values(lease_until=until, owner=owner, last_run_at=now))
        return bool(done.rowcount == 1)


def hygiene_repo(uow: UnitOfWork) -> SqlHygiene:
    conn: Connection = getattr(uow, "connection")  # noqa: B009 - SqlUnitOfWork only
    return SqlHygiene(conn)
