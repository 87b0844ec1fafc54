"""Tables and repositories of invitations, password-reset links and TOTP second factors
(migration ``0009_console_auth``). Links hold only the keyed digest of their token; factors
hold their secret sealed and their recovery codes as digests."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SqlConnection
from sqlalchemy.engine import RowMapping

from keyplane.core.ports import UnitOfWork
from keyplane.core.sign_in import (
    FactorRepo,
    LinkKind,
    LinkRepo,
    OneTimeLink,
    SecondFactor,
    SignInRepos,
)
from keyplane.storage.sql.tables import ID, UTCDateTime, metadata

one_time_links = sa.Table(
    "one_time_links",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("role", sa.String(20), nullable=True),
    sa.Column("principal_id", ID, sa.ForeignKey("principals.id", ondelete="CASCADE"),
              nullable=True),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=True),
    sa.Column("withdrawn_at", UTCDateTime, nullable=True),
    sa.Index("ix_one_time_links_tenant", "tenant_id", "kind"),
)

second_factors = sa.Table(
    "second_factors",
    metadata,
    sa.Column("principal_id", ID, sa.ForeignKey("principals.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("sealed_secret", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("confirmed_at", UTCDateTime, nullable=True),
    sa.Column("last_step", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("recovery_digests", sa.JSON, nullable=False),
)


class SqlLinks:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    @staticmethod
    def _build(r: RowMapping) -> OneTimeLink:
        values = {c.name: r[c.name] for c in one_time_links.columns}
        values["kind"] = LinkKind(values["kind"])
        return OneTimeLink(**values)

    def add(self, link: OneTimeLink) -> None:
        values = {c.name: getattr(link, c.name) for c in one_time_links.columns}
        values["kind"] = link.kind.value
        self.conn.execute(one_time_links.insert().values(**values))

    def find(self, digest: str, *, for_update: bool = False) -> OneTimeLink | None:
        q = one_time_links.select().where(one_time_links.c.digest == digest)
        if for_update:
            q = q.with_for_update()
        r = self.conn.execute(q).mappings().first()
        return self._build(r) if r is not None else None

    def get(self, tenant_id: str, link_id: str) -> OneTimeLink | None:
        r = self.conn.execute(one_time_links.select().where(
            one_time_links.c.id == link_id, one_time_links.c.tenant_id == tenant_id,
        )).mappings().first()
        return self._build(r) if r is not None else None

    def update(self, link: OneTimeLink) -> None:
        t = one_time_links
        self.conn.execute(t.update().where(t.c.id == link.id).values(
            used_at=link.used_at, withdrawn_at=link.withdrawn_at))

    def pending(self, tenant_id: str, kind: LinkKind, now: datetime,
                email: str | None = None) -> list[OneTimeLink]:
        t = one_time_links
        q = t.select().where(t.c.tenant_id == tenant_id, t.c.kind == kind.value,
                             t.c.used_at.is_(None), t.c.withdrawn_at.is_(None),
                             t.c.expires_at > now)
        if email is not None:
            q = q.where(t.c.email == email)
        rows = self.conn.execute(q.order_by(t.c.created_at.desc()).limit(500)).mappings()
        return [self._build(r) for r in rows]


class SqlFactors:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    def get(self, principal_id: str, *, for_update: bool = False) -> SecondFactor | None:
        q = second_factors.select().where(second_factors.c.principal_id == principal_id)
        if for_update:
            q = q.with_for_update()
        r = self.conn.execute(q).mappings().first()
        if r is None:
            return None
        values = {c.name: r[c.name] for c in second_factors.columns}
        values["recovery_digests"] = list(values["recovery_digests"])
        return SecondFactor(**values)

    def put(self, factor: SecondFactor) -> None:
        values = {c.name: getattr(factor, c.name) for c in second_factors.columns}
        values["recovery_digests"] = list(factor.recovery_digests)
        self.delete(factor.principal_id)
        self.conn.execute(second_factors.insert().values(**values))

    def delete(self, principal_id: str) -> None:
        self.conn.execute(second_factors.delete().where(
            second_factors.c.principal_id == principal_id))


class SqlSignInRepos:
    def __init__(self, conn: SqlConnection) -> None:
        self.links: LinkRepo = SqlLinks(conn)
        self.factors: FactorRepo = SqlFactors(conn)


def sign_in_repos(uow: UnitOfWork) -> SignInRepos:
    """The invitation, reset-link and second-factor repositories bound to ``uow``."""
    conn = getattr(uow, "connection", None)
    if not isinstance(conn, SqlConnection):
        raise TypeError("sign-in links and factors need a SQL unit of work inside its `with` block")
    return SqlSignInRepos(conn)
