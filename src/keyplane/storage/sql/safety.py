"""Tables and repositories of one-time share links and of accepted secret-scanning reports
(migration ``0006_leaks_shares``).

A share row holds only ciphertext the server cannot read; it is set to NULL when the link is
opened, withdrawn or found expired. A report row holds the SHA-256 of an accepted signed body,
kept for a day so that a replayed body is refused.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SqlConnection
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from keyplane.core.model import Share
from keyplane.core.ports import ReportRepo, SafetyRepos, ShareRepo, UnitOfWork
from keyplane.storage.sql.tables import ID, UTCDateTime, metadata

shares = sa.Table(
    "shares",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("note", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ciphertext", sa.Text, nullable=True),
    sa.Column("opened_at", UTCDateTime, nullable=True),
    sa.Column("withdrawn_at", UTCDateTime, nullable=True),
    sa.Index("ix_shares_tenant", "tenant_id", "id"),
    sa.Index("ix_shares_expires", "expires_at"),
)

scanning_reports = sa.Table(
    "scanning_reports",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("ix_scanning_reports_received", "received_at"),
)


class SqlShares:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    @staticmethod
    def _build(r: RowMapping) -> Share:
        return Share(**{c.name: r[c.name] for c in shares.columns})

    def add(self, share: Share) -> None:
        self.conn.execute(shares.insert().values(
            **{c.name: getattr(share, c.name) for c in shares.columns}))

    def get(self, share_id: str, *, for_update: bool = False) -> Share | None:
        q = shares.select().where(shares.c.id == share_id)
        if for_update:
            q = q.with_for_update()
        row = self.conn.execute(q).mappings().first()
        return self._build(row) if row else None

    def update(self, share: Share) -> None:
        self.conn.execute(shares.update().where(shares.c.id == share.id).values(
            ciphertext=share.ciphertext, opened_at=share.opened_at,
            withdrawn_at=share.withdrawn_at))

    def forget_expired(self, now: datetime) -> int:
        """Drop the ciphertext of every expired link; returns how many."""
        done = self.conn.execute(shares.update().where(
            shares.c.expires_at <= now, shares.c.ciphertext.is_not(None)).values(ciphertext=None))
        return int(done.rowcount or 0)


class SqlReports:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    def remember(self, digest: str, at: datetime) -> bool:
        """Record ``digest``; False if it is already recorded (a replay)."""
        exists = self.conn.execute(
            sa.select(scanning_reports.c.digest).where(scanning_reports.c.digest == digest)
        ).first()
        if exists:
            return False
        try:
            with self.conn.begin_nested():
                self.conn.execute(scanning_reports.insert().values(digest=digest,
                                                                   received_at=at))
        except IntegrityError:  # a concurrent identical report won the race
            return False
        return True

    def forget_before(self, at: datetime) -> int:
        done = self.conn.execute(
            scanning_reports.delete().where(scanning_reports.c.received_at < at))
        return int(done.rowcount or 0)


class SqlSafetyRepos:
    def __init__(self, conn: SqlConnection) -> None:
        self.shares: ShareRepo = SqlShares(conn)
        self.reports: ReportRepo = SqlReports(conn)


def safety_repos(uow: UnitOfWork) -> SafetyRepos:
    """The share and report repositories bound to ``uow``'s transaction."""
    conn = getattr(uow, "connection", None)
    if not isinstance(conn, SqlConnection):
        raise TypeError("shares and leak reports need a SQL unit of work inside its block")
    return SqlSafetyRepos(conn)
