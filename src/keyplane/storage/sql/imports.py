"""Storage for imported keys (migration ``0009_imports``): where each imported key came from
(``key_imports``, also what makes a second import of the same key a no-op), whether it keeps a
foreign format, and its legacy digest until its first use upgrades it to Keyplane's keyed
HMAC; and per-scope usage (``key_scope_usage``: valid verifications per key, scope and day)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from keyplane.core.legacy import ImportRecord
from keyplane.core.model import ApiKey, KeySecret
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql.tables import ID, UTCDateTime, api_keys, key_secrets, metadata

key_imports = sa.Table(
    "key_imports",
    metadata,
    sa.Column("key_id", ID, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("source", sa.String(20), nullable=False),  # drf-api-key, csv, keyplane
    sa.Column("source_ref", sa.String(200), nullable=False),  # the key's id there (no secret)
    sa.Column("foreign_format", sa.Boolean, nullable=False),  # not <prefix>_<body><check>
    sa.Column("legacy_scheme", sa.String(40), nullable=True),  # until upgraded
    sa.Column("legacy_lookup", sa.String(80), nullable=True),
    sa.Column("legacy_digest", sa.String(255), nullable=True),
    sa.Column("imported_at", UTCDateTime, nullable=False),
    sa.Column("upgraded_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("source", "source_ref", name="uq_key_imports_source_ref"),
    sa.UniqueConstraint("legacy_lookup", name="uq_key_imports_legacy_lookup"),
    sa.Index("ix_key_imports_foreign", "foreign_format"),
)

# no foreign key, as key_usage: a flush must never fail because its key was just deleted
key_scope_usage = sa.Table(
    "key_scope_usage",
    metadata,
    sa.Column("key_id", ID, primary_key=True),
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("day", UTCDateTime, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

KI = key_imports.c


class SqlImports:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def present(self, source: str, refs: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """``source_ref -> (key id, tenant id)`` of the refs already imported from ``source``."""
        refs = list(dict.fromkeys(refs))
        if not refs:
            return {}
        q = (sa.select(KI.source_ref, KI.key_id, api_keys.c.tenant_id)
             .select_from(key_imports.join(api_keys, api_keys.c.id == KI.key_id))
             .where(KI.source == source, KI.source_ref.in_(refs)))
        return {r: (k, t) for r, k, t in self.conn.execute(q)}

    def digests_present(self, digests: Iterable[str]) -> dict[str, str | None]:
        """``digest -> tenant id`` of the secrets already stored with one of ``digests``."""
        digests = list(dict.fromkeys(digests))
        if not digests:
            return {}
        s = key_secrets.c
        q = (sa.select(s.digest, api_keys.c.tenant_id)
             .select_from(key_secrets.join(api_keys, api_keys.c.id == s.key_id))
             .where(s.digest.in_(digests)))
        return {d: t for d, t in self.conn.execute(q)}

    def keys_present(self, key_ids: Iterable[str]) -> dict[str, str | None]:
        """``key id -> tenant id`` of the keys that already exist."""
        key_ids = list(dict.fromkeys(key_ids))
        if not key_ids:
            return {}
        q = sa.select(api_keys.c.id, api_keys.c.tenant_id).where(api_keys.c.id.in_(key_ids))
        return {k: t for k, t in self.conn.execute(q)}

    def lookups_present(self, lookups: Iterable[str]) -> set[str]:
        lookups = list(dict.fromkeys(lookups))
        if not lookups:
            return set()
        q = sa.select(KI.legacy_lookup).where(KI.legacy_lookup.in_(lookups))
        return {r for (r,) in self.conn.execute(q)}

    def add_many(self, keys: list[ApiKey], secrets: list[KeySecret],
                 imports: list[ImportRecord]) -> None:
        """Inserts the keys, their secrets and where they came from (one executemany per
        table)."""
        if keys:
            # imported here: tables.py loads this module for its tables (see hygiene.py)
            from keyplane.storage.sql.repositories import SqlKeys

            self.conn.execute(api_keys.insert(), [SqlKeys._row(k) for k in keys])
        if secrets:
            self.conn.execute(key_secrets.insert(), [dict(
                id=s.id, key_id=s.key_id, digest=s.digest, pepper_id=s.pepper_id,
                start=s.start, created_at=s.created_at, expires_at=s.expires_at)
                for s in secrets])
        if imports:
            self.conn.execute(key_imports.insert(), [dict(
                key_id=r.key_id, source=r.source, source_ref=r.source_ref,
                foreign_format=r.foreign, legacy_scheme=r.legacy_scheme,
                legacy_lookup=r.legacy_lookup, legacy_digest=r.legacy_digest,
                imported_at=r.imported_at) for r in imports])

    def any_foreign(self) -> bool:
        q = sa.select(KI.key_id).where(KI.foreign_format.is_(True)).limit(1)
        return self.conn.execute(q).first() is not None

    def legacy(self, lookup: str, *, for_update: bool = False) -> tuple[str, str, str] | None:
        """``(key id, scheme, digest)`` of the not yet upgraded key found by ``lookup``."""
        q = sa.select(KI.key_id, KI.legacy_scheme, KI.legacy_digest).where(
            KI.legacy_lookup == lookup, KI.legacy_digest.is_not(None))
        if for_update:
            q = q.with_for_update()
        row = self.conn.execute(q).first()
        return (row[0], row[1], row[2]) if row else None

    def upgraded(self, key_id: str, at: datetime) -> None:
        """Forgets the legacy digest (its Keyplane digest is stored now); the lookup stays
        reserved so that no other import can take it."""
        self.conn.execute(key_imports.update().where(KI.key_id == key_id).values(
            legacy_scheme=None, legacy_digest=None, upgraded_at=at))

    def add_scope_usage(self, counts: Mapping[tuple[str, str, datetime], int]) -> None:
        if not counts:
            return
        dialect: Any = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        rows = [{"key_id": k, "scope": s, "day": d, "count": n}
                for (k, s, d), n in sorted(counts.items()) if n]
        u = key_scope_usage.c
        stmt = dialect.insert(key_scope_usage)
        stmt = stmt.on_conflict_do_update(index_elements=[u.key_id, u.scope, u.day],
                                          set_={"count": u.count + stmt.excluded.count})
        self.conn.execute(stmt, rows)

    def scopes_used(self, key_ids: Iterable[str], since: datetime) -> dict[str, set[str]]:
        """The scopes each key was verified for since ``since``."""
        key_ids = list(key_ids)
        if not key_ids:
            return {}
        u = key_scope_usage.c
        q = (sa.select(u.key_id, u.scope).where(u.key_id.in_(key_ids), u.day >= since)
             .group_by(u.key_id, u.scope))
        out: dict[str, set[str]] = {}
        for key_id, scope in self.conn.execute(q):
            out.setdefault(key_id, set()).add(scope)
        return out


def imports_repo(uow: UnitOfWork) -> SqlImports:
    conn: Connection = getattr(uow, "connection")  # noqa: B009 - SqlUnitOfWork only
    return SqlImports(conn)


class SqlScopeUsageStore:
    """Per-scope daily counts, flushed by the usage recorder in its transaction."""

    def add_scopes(self, uow: UnitOfWork,
                   counts: Mapping[tuple[str, str, datetime], int]) -> None:
        imports_repo(uow).add_scope_usage(counts)
