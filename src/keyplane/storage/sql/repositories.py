"""Repositories over one SQLAlchemy connection; the unit of work owns the transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from keyplane.core.model import (
    ApiKey,
    Group,
    KeyLeak,
    KeySecret,
    LeakAction,
    Page,
    Principal,
    PrincipalKind,
    RateLimit,
    Role,
    Tenant,
    TenantPolicy,
)
from keyplane.storage.sql import tables as t
from keyplane.storage.sql.notify import append_and_notify, sends_notifications

ID_BATCH = 500  # ids in one IN (...): well under SQLite's and PostgreSQL's bind limits


class _Identified(Protocol):
    @property
    def id(self) -> str: ...  # the page's cursor


_Item = TypeVar("_Item", bound=_Identified)


def _page(rows: list[RowMapping], limit: int, build: Callable[[RowMapping], _Item],
          ) -> Page[_Item]:
    items = [build(r) for r in rows[:limit]]
    next_cursor = items[-1].id if len(rows) > limit and items else None
    return Page(items=items, next_cursor=next_cursor)


def _newest_first(query: sa.Select[Any], id_col: sa.Column[Any], cursor: str | None,
                  limit: int) -> sa.Select[Any]:
    if cursor:
        query = query.where(id_col < cursor)
    return query.order_by(id_col.desc()).limit(limit + 1)


class SqlTenants:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @staticmethod
    def _row(tenant: Tenant) -> dict[str, Any]:
        p = tenant.policy
        return dict(
            id=tenant.id, name=tenant.name, enabled=tenant.enabled, created_at=tenant.created_at,
            default_expiry_days=p.default_expiry_days, max_expiry_days=p.max_expiry_days,
            allow_non_expiring=p.allow_non_expiring, allowed_ips=list(p.allowed_ips),
            require_tls_default=p.require_tls_default,
            leaked_key_action=p.leaked_key_action.value,
            revoke_unused_after_days=p.revoke_unused_after_days,
            api_users_need_group=p.api_users_need_group,
            audit_retention_days=p.audit_retention_days,
            require_admin_two_factor=p.require_admin_two_factor,
        )

    @staticmethod
    def _build(r: RowMapping) -> Tenant:
        return Tenant(
            id=r["id"], name=r["name"], enabled=r["enabled"], created_at=r["created_at"],
            policy=TenantPolicy(
                default_expiry_days=r["default_expiry_days"], max_expiry_days=r["max_expiry_days"],
                allow_non_expiring=r["allow_non_expiring"], allowed_ips=list(r["allowed_ips"]),
                require_tls_default=r["require_tls_default"],
                leaked_key_action=LeakAction(r["leaked_key_action"]),
                revoke_unused_after_days=r["revoke_unused_after_days"],
                api_users_need_group=r["api_users_need_group"],
                audit_retention_days=r["audit_retention_days"],
                require_admin_two_factor=r["require_admin_two_factor"],
            ),
        )

    def add(self, tenant: Tenant) -> None:
        self.conn.execute(t.tenants.insert().values(**self._row(tenant)))

    def get(self, tenant_id: str, *, for_update: bool = False) -> Tenant | None:
        """``for_update`` serialises changes that must see each other (the last admin):
        PostgreSQL's FOR NO KEY UPDATE, so rows that merely reference the tenant can still be
        inserted meanwhile; SQLite serialises every write anyway."""
        q = t.tenants.select().where(t.tenants.c.id == tenant_id)
        if for_update:
            q = q.with_for_update(key_share=True)
        row = self.conn.execute(q).mappings().first()
        return self._build(row) if row else None

    def update(self, tenant: Tenant) -> None:
        row = self._row(tenant)
        row.pop("id")
        self.conn.execute(t.tenants.update().where(t.tenants.c.id == tenant.id).values(**row))

    def page(self, *, limit: int, cursor: str | None) -> Page[Tenant]:
        q = _newest_first(t.tenants.select(), t.tenants.c.id, cursor, limit)
        return _page(list(self.conn.execute(q).mappings()), limit, self._build)


class SqlPrincipals:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _build(self, r: RowMapping) -> Principal:
        return self._build_all([r])[0]

    def _build_all(self, rows: Sequence[RowMapping]) -> list[Principal]:
        """Principals from their rows, every row's groups read in one query (not one each:
        a page of 200 members was 201 queries)."""
        groups: dict[str, list[str]] = {r["id"]: [] for r in rows}
        pg = t.principal_groups
        ids = list(groups)
        for start in range(0, len(ids), ID_BATCH):
            for pid, gid in self.conn.execute(
                sa.select(pg.c.principal_id, pg.c.group_id)
                .where(pg.c.principal_id.in_(ids[start:start + ID_BATCH]))
                .order_by(pg.c.principal_id, pg.c.group_id)
            ):
                groups[pid].append(gid)
        return [Principal(
            id=r["id"], tenant_id=r["tenant_id"], kind=PrincipalKind(r["kind"]), name=r["name"],
            role=Role(r["role"]), created_at=r["created_at"], email=r["email"],
            password_hash=r["password_hash"], enabled=r["enabled"], group_ids=groups[r["id"]],
        ) for r in rows]

    def _write_groups(self, principal: Principal) -> None:
        pg = t.principal_groups
        self.conn.execute(pg.delete().where(pg.c.principal_id == principal.id))
        if principal.group_ids:
            self.conn.execute(
                pg.insert(), [{"principal_id": principal.id, "group_id": g}
                              for g in sorted(set(principal.group_ids))]
            )

    @staticmethod
    def _row(p: Principal) -> dict[str, Any]:
        return dict(
            id=p.id, tenant_id=p.tenant_id, kind=p.kind.value, name=p.name, email=p.email,
            role=p.role.value, password_hash=p.password_hash, enabled=p.enabled,
            created_at=p.created_at,
        )

    def add(self, principal: Principal) -> None:
        self.conn.execute(t.principals.insert().values(**self._row(principal)))
        self._write_groups(principal)

    def get(self, tenant_id: str, principal_id: str) -> Principal | None:
        q = t.principals.select().where(
            t.principals.c.id == principal_id, t.principals.c.tenant_id == tenant_id
        )
        row = self.conn.execute(q).mappings().first()
        return self._build(row) if row else None

    def get_by_email(self, tenant_id: str, email: str) -> Principal | None:
        q = t.principals.select().where(
            t.principals.c.tenant_id == tenant_id, t.principals.c.email == email
        )
        row = self.conn.execute(q).mappings().first()
        return self._build(row) if row else None

    def many(self, tenant_id: str, principal_ids: Iterable[str]) -> dict[str, Principal]:
        ids = sorted(set(principal_ids))
        rows: list[RowMapping] = []
        for start in range(0, len(ids), ID_BATCH):
            rows.extend(self.conn.execute(t.principals.select().where(
                t.principals.c.tenant_id == tenant_id,
                t.principals.c.id.in_(ids[start:start + ID_BATCH]))).mappings())
        return {p.id: p for p in self._build_all(rows)}

    def members_with_email(self, email: str) -> list[Principal]:
        q = t.principals.select().where(
            t.principals.c.email == email, t.principals.c.kind == PrincipalKind.MEMBER.value
        ).order_by(t.principals.c.id)
        return self._build_all(list(self.conn.execute(q).mappings()))

    def count_admins(self, tenant_id: str) -> int:
        p = t.principals
        q = sa.select(sa.func.count()).select_from(p).where(
            p.c.tenant_id == tenant_id, p.c.kind == PrincipalKind.MEMBER.value,
            p.c.role == Role.ADMIN.value, p.c.enabled.is_(True),
        )
        return int(self.conn.execute(q).scalar_one())

    def update(self, principal: Principal) -> None:
        row = self._row(principal)
        row.pop("id")
        self.conn.execute(
            t.principals.update().where(t.principals.c.id == principal.id).values(**row)
        )
        self._write_groups(principal)

    def delete(self, tenant_id: str, principal_id: str) -> None:
        self.conn.execute(
            t.principals.delete().where(
                t.principals.c.id == principal_id, t.principals.c.tenant_id == tenant_id
            )
        )

    def page(self, tenant_id: str, *, kind: str | None, limit: int,
             cursor: str | None) -> Page[Principal]:
        q = t.principals.select().where(t.principals.c.tenant_id == tenant_id)
        if kind:
            q = q.where(t.principals.c.kind == kind)
        q = _newest_first(q, t.principals.c.id, cursor, limit)
        rows = list(self.conn.execute(q).mappings())
        items = self._build_all(rows[:limit])
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit and items
                    else None)


class SqlGroups:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @staticmethod
    def _build(r: RowMapping) -> Group:
        return Group(
            id=r["id"], tenant_id=r["tenant_id"], name=r["name"], scopes=list(r["scopes"]),
            created_at=r["created_at"], description=r["description"],
        )

    @staticmethod
    def _row(g: Group) -> dict[str, Any]:
        return dict(id=g.id, tenant_id=g.tenant_id, name=g.name, scopes=list(g.scopes),
                    created_at=g.created_at, description=g.description)

    def add(self, group: Group) -> None:
        self.conn.execute(t.groups.insert().values(**self._row(group)))

    def get(self, tenant_id: str, group_id: str) -> Group | None:
        q = t.groups.select().where(t.groups.c.id == group_id, t.groups.c.tenant_id == tenant_id)
        row = self.conn.execute(q).mappings().first()
        return self._build(row) if row else None

    def get_many(self, group_ids: Iterable[str]) -> list[Group]:
        ids = list(group_ids)
        if not ids:
            return []
        q = t.groups.select().where(t.groups.c.id.in_(ids)).order_by(t.groups.c.id)
        return [self._build(r) for r in self.conn.execute(q).mappings()]

    def update(self, group: Group) -> None:
        row = self._row(group)
        row.pop("id")
        self.conn.execute(t.groups.update().where(t.groups.c.id == group.id).values(**row))

    def delete(self, tenant_id: str, group_id: str) -> None:
        self.conn.execute(
            t.groups.delete().where(t.groups.c.id == group_id, t.groups.c.tenant_id == tenant_id)
        )

    def for_tenant(self, tenant_id: str) -> list[Group]:
        q = t.groups.select().where(t.groups.c.tenant_id == tenant_id).order_by(t.groups.c.name)
        return [self._build(r) for r in self.conn.execute(q).mappings()]

    def member_ids(self, group_id: str) -> list[str]:
        q = sa.select(t.principal_groups.c.principal_id).where(
            t.principal_groups.c.group_id == group_id
        )
        return [p for (p,) in self.conn.execute(q)]


class SqlKeys:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @staticmethod
    def _row(k: ApiKey) -> dict[str, Any]:
        return dict(
            id=k.id, tenant_id=k.tenant_id, owner_id=k.owner_id, name=k.name,
            description=k.description, prefix=k.prefix, start=k.start, scopes=list(k.scopes),
            created_by=k.created_by, created_at=k.created_at, updated_at=k.updated_at,
            last_used_at=k.last_used_at, expires_at=k.expires_at, lifetime_days=k.lifetime_days,
            allowed_ips=list(k.allowed_ips), require_tls=k.require_tls, enabled=k.enabled,
            revoked_at=k.revoked_at,
            ratelimit=(
                {"limit": k.ratelimit.limit, "window_seconds": k.ratelimit.window_seconds}
                if k.ratelimit else None
            ),
            meta=dict(k.meta), remaining_uses=k.remaining,
            leaked_at=k.leak.at if k.leak else None,
            leak_url=k.leak.url if k.leak else None,
            leak_source=k.leak.source if k.leak else None,
        )

    @staticmethod
    def _build(r: RowMapping) -> ApiKey:
        rl = r["ratelimit"]
        return ApiKey(
            id=r["id"], tenant_id=r["tenant_id"], owner_id=r["owner_id"], name=r["name"],
            description=r["description"], prefix=r["prefix"], start=r["start"],
            scopes=list(r["scopes"]), created_by=r["created_by"], created_at=r["created_at"],
            updated_at=r["updated_at"], last_used_at=r["last_used_at"],
            expires_at=r["expires_at"], lifetime_days=r["lifetime_days"],
            allowed_ips=list(r["allowed_ips"]), require_tls=r["require_tls"],
            enabled=r["enabled"], revoked_at=r["revoked_at"],
            ratelimit=RateLimit(rl["limit"], rl["window_seconds"]) if rl else None,
            meta=dict(r["meta"]), remaining=r["remaining_uses"],
            leak=(KeyLeak(r["leaked_at"], r["leak_url"] or "", r["leak_source"] or "")
                  if r["leaked_at"] is not None else None),
        )

    def add(self, key: ApiKey) -> None:
        self.conn.execute(t.api_keys.insert().values(**self._row(key)))

    def _tenant_clause(self, tenant_id: str | None) -> sa.ColumnElement[bool]:
        col = t.api_keys.c.tenant_id
        return col.is_(None) if tenant_id is None else col == tenant_id

    def get(self, tenant_id: str | None, key_id: str, *, for_update: bool = False) -> (
        ApiKey | None
    ):
        q = t.api_keys.select().where(t.api_keys.c.id == key_id, self._tenant_clause(tenant_id))
        if for_update:
            q = q.with_for_update()
        row = self.conn.execute(q).mappings().first()
        return self._build(row) if row else None

    def get_any(self, key_id: str) -> ApiKey | None:
        row = self.conn.execute(
            t.api_keys.select().where(t.api_keys.c.id == key_id)
        ).mappings().first()
        return self._build(row) if row else None

    def update(self, key: ApiKey) -> None:
        row = self._row(key)
        row.pop("id")
        row.pop("last_used_at")  # owned by the usage recorder
        row.pop("remaining_uses")  # decremented by verification; set with set_remaining
        self.conn.execute(t.api_keys.update().where(t.api_keys.c.id == key.id).values(**row))

    def page(self, tenant_id: str | None, *, owner_id: str | None, enabled: bool | None,
             q: str | None, limit: int, cursor: str | None) -> Page[ApiKey]:
        k = t.api_keys.c
        query = t.api_keys.select().where(self._tenant_clause(tenant_id), k.revoked_at.is_(None))
        if owner_id:
            query = query.where(k.owner_id == owner_id)
        if enabled is not None:
            query = query.where(k.enabled == enabled)
        if q:
            like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(sa.or_(k.name.ilike(like, escape="\\"),
                                       k.description.ilike(like, escape="\\"),
                                       k.start.like(like, escape="\\")))
        query = _newest_first(query, k.id, cursor, limit)
        return _page(list(self.conn.execute(query).mappings()), limit, self._build)

    def ids_for_owner(self, owner_id: str) -> list[str]:
        q = sa.select(t.api_keys.c.id).where(t.api_keys.c.owner_id == owner_id)
        return [i for (i,) in self.conn.execute(q)]

    @staticmethod
    def _build_secret(r: RowMapping) -> KeySecret:
        return KeySecret(
            id=r["id"], key_id=r["key_id"], digest=r["digest"], pepper_id=r["pepper_id"],
            start=r["start"], created_at=r["created_at"], expires_at=r["expires_at"],
        )

    def add_secret(self, secret: KeySecret) -> None:
        self.conn.execute(t.key_secrets.insert().values(
            id=secret.id, key_id=secret.key_id, digest=secret.digest, pepper_id=secret.pepper_id,
            start=secret.start, created_at=secret.created_at, expires_at=secret.expires_at,
        ))

    def secrets(self, key_id: str) -> list[KeySecret]:
        q = t.key_secrets.select().where(t.key_secrets.c.key_id == key_id).order_by(
            t.key_secrets.c.id
        )
        return [self._build_secret(r) for r in self.conn.execute(q).mappings()]

    def update_secret(self, secret: KeySecret) -> None:
        self.conn.execute(t.key_secrets.update().where(t.key_secrets.c.id == secret.id).values(
            expires_at=secret.expires_at, digest=secret.digest, pepper_id=secret.pepper_id,
        ))

    def delete_secret(self, secret_id: str) -> None:
        self.conn.execute(t.key_secrets.delete().where(t.key_secrets.c.id == secret_id))

    def find_secret(self, digest: str) -> KeySecret | None:
        q = t.key_secrets.select().where(t.key_secrets.c.digest == digest)
        row = self.conn.execute(q).mappings().first()
        return self._build_secret(row) if row else None

    def set_remaining(self, key_id: str, remaining: int | None) -> None:
        self.conn.execute(t.api_keys.update().where(t.api_keys.c.id == key_id)
                          .values(remaining_uses=remaining))

    def touch(self, last_used: dict[str, datetime]) -> None:
        k = t.api_keys.c
        for key_id, at in sorted(last_used.items()):
            self.conn.execute(
                t.api_keys.update()
                .where(k.id == key_id, sa.or_(k.last_used_at.is_(None), k.last_used_at < at))
                .values(last_used_at=at)
            )


class SqlScopes:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def all(self) -> dict[str, str]:
        q = sa.select(t.scopes.c.name, t.scopes.c.description).order_by(t.scopes.c.name)
        return {n: d for n, d in self.conn.execute(q)}

    def put(self, name: str, description: str) -> None:
        exists = self.conn.execute(
            sa.select(t.scopes.c.name).where(t.scopes.c.name == name)
        ).first()
        if exists:
            self.conn.execute(
                t.scopes.update().where(t.scopes.c.name == name).values(description=description)
            )
        else:
            self.conn.execute(t.scopes.insert().values(name=name, description=description))

    def delete(self, name: str) -> None:
        self.conn.execute(t.scopes.delete().where(t.scopes.c.name == name))


class SqlChanges:
    def __init__(self, conn: Connection, now: Callable[[], datetime]) -> None:
        self.conn = conn
        self._now = now

    def append(self, kind: str, ref: str) -> None:
        insert = t.changes.insert().values(kind=kind, ref=ref, at=self._now())
        if sends_notifications(self.conn):  # PostgreSQL: announced to every worker at commit
            append_and_notify(self.conn, insert, t.changes.c.id, kind, ref)
        else:
            self.conn.execute(insert)

    def head(self) -> int:
        value = self.conn.execute(sa.select(sa.func.max(t.changes.c.id))).scalar()
        return int(value or 0)
