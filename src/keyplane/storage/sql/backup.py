"""Rows of a backup (``keyplane export`` / ``keyplane restore``), table by table.

Each section is one table, listed so that a row's references are restored before it. A
tenant's backup selects that tenant's rows; the scope catalogue and the apps of other owners
its connections use come along as *shared* rows, which a restore keeps when they exist (such
an app whose owner is not in the target becomes a platform app).
Console accounts (operator staff, partner developers) come with a full backup only; a restore
of one tenant keeps another owner's app without its developer when that account is not there.
Left out on purpose: browser sessions, authorization codes, share links (short-lived, and a
share link holds an encrypted secret), the webhook outbox, the change log and leak-report
dedupe digests.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from keyplane.core.errors import Conflict
from keyplane.core.ports import BackupRepo, UnitOfWork
from keyplane.storage.sql import oauth_tables as o
from keyplane.storage.sql import tables as t
from keyplane.storage.sql.account_tables import accounts
from keyplane.storage.sql.events import automations, key_reminders
from keyplane.storage.sql.imports import key_imports, key_scope_usage
from keyplane.storage.sql.sign_in import second_factors
from keyplane.storage.sql.usage import key_denials, key_usage
from keyplane.storage.sql.webhook_tables import webhooks

TABLES: dict[str, sa.Table] = {
    "tenants": t.tenants,
    "scopes": t.scopes,
    "principals": t.principals,
    "groups": t.groups,
    "principal_groups": t.principal_groups,
    "second_factors": second_factors,  # sealed under the pepper, as webhook secrets are
    "accounts": accounts,
    "oauth_apps": o.oauth_apps,
    "oauth_client_secrets": o.oauth_client_secrets,
    "api_keys": t.api_keys,
    "key_secrets": t.key_secrets,
    "key_imports": key_imports,  # an imported key's origin and legacy digest
    "key_usage": key_usage,
    "key_scope_usage": key_scope_usage,
    "key_denials": key_denials,  # a key's last refusals (the console's key page)
    "key_reminders": key_reminders,  # expiry reminders already sent: never sent twice
    "oauth_connections": o.oauth_connections,
    "oauth_tokens": o.oauth_tokens,
    "webhooks": webhooks,
    "automations": automations,
    "audit_events": t.audit_events,
    "audit_chains": t.audit_chains,  # the chain heads: a restored log still verifies
}
BATCH = 500


def _tenant_filter(section: str, tenant_id: str) -> sa.ColumnElement[bool] | None:
    keys = sa.select(t.api_keys.c.id).where(t.api_keys.c.tenant_id == tenant_id)
    conns = sa.select(o.oauth_connections.c.id).where(o.oauth_connections.c.tenant_id == tenant_id)
    members = sa.select(t.principals.c.id).where(t.principals.c.tenant_id == tenant_id)
    used_apps = sa.select(o.oauth_connections.c.app_id).where(
        o.oauth_connections.c.tenant_id == tenant_id)
    filters: dict[str, sa.ColumnElement[bool] | None] = {
        "tenants": t.tenants.c.id == tenant_id,
        "scopes": None,
        "principals": t.principals.c.tenant_id == tenant_id,
        "groups": t.groups.c.tenant_id == tenant_id,
        "principal_groups": t.principal_groups.c.principal_id.in_(members),
        "second_factors": second_factors.c.tenant_id == tenant_id,
        "accounts": sa.false(),  # console accounts belong to no tenant
        "oauth_apps": sa.or_(o.oauth_apps.c.owner_tenant_id == tenant_id,
                             o.oauth_apps.c.id.in_(used_apps)),
        "oauth_client_secrets": o.oauth_client_secrets.c.app_id.in_(
            sa.select(o.oauth_apps.c.id).where(sa.or_(
                o.oauth_apps.c.owner_tenant_id == tenant_id, o.oauth_apps.c.id.in_(used_apps)))),
        "api_keys": t.api_keys.c.tenant_id == tenant_id,
        "key_secrets": t.key_secrets.c.key_id.in_(keys),
        "key_imports": key_imports.c.key_id.in_(keys),
        "key_usage": key_usage.c.key_id.in_(keys),
        "key_scope_usage": key_scope_usage.c.key_id.in_(keys),
        "key_denials": key_denials.c.key_id.in_(keys),
        "key_reminders": key_reminders.c.key_id.in_(keys),
        "oauth_connections": o.oauth_connections.c.tenant_id == tenant_id,
        "oauth_tokens": o.oauth_tokens.c.connection_id.in_(conns),
        "webhooks": webhooks.c.tenant_id == tenant_id,
        "automations": automations.c.tenant_id == tenant_id,
        "audit_events": t.audit_events.c.tenant_id == tenant_id,
        "audit_chains": t.audit_chains.c.chain == tenant_id,
    }
    return filters[section]


def _shared(section: str, row: dict[str, Any], tenant_id: str | None,
            owners: dict[str, str | None]) -> bool:
    if section == "scopes":
        return True
    if tenant_id is None:
        return False
    if section == "oauth_apps":
        return bool(row["owner_tenant_id"] != tenant_id)
    if section == "oauth_client_secrets":
        return owners.get(row["app_id"]) != tenant_id
    return False


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _decode(table: sa.Table, row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in table.columns:
        value = out.get(column.name)
        if isinstance(value, str) and isinstance(column.type, t.UTCDateTime):
            out[column.name] = datetime.fromisoformat(value)
    return out


class SqlBackup:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._owners: dict[str, str | None] = {}

    def sections(self) -> list[str]:
        return list(TABLES)

    def columns(self, section: str) -> set[str]:
        return {c.name for c in TABLES[section].columns}

    def read(self, section: str, tenant_id: str | None) -> Iterator[tuple[dict[str, Any], bool]]:
        table = TABLES[section]
        query = sa.select(table).order_by(*table.primary_key.columns)
        if tenant_id is not None and (where := _tenant_filter(section, tenant_id)) is not None:
            query = query.where(where)
        for found in self.conn.execute(query.execution_options(yield_per=1000)).mappings():
            row = {name: _encode(value) for name, value in found.items()}
            if section == "oauth_apps":
                self._owners[row["id"]] = row["owner_tenant_id"]
            yield row, _shared(section, row, tenant_id, self._owners)

    def key(self, section: str, row: dict[str, Any]) -> str:
        table = TABLES[section]
        return "/".join(str(row.get(c.name)) for c in table.primary_key.columns)

    def existing(self, section: str, rows: list[dict[str, Any]]) -> list[str]:
        table = TABLES[section]
        pk = list(table.primary_key.columns)
        if len(pk) == 1:
            wanted = [r.get(pk[0].name) for r in rows]
            query = sa.select(pk[0]).where(pk[0].in_(wanted))
            return [str(v) for v in self.conn.execute(query).scalars()]
        # a link or usage row (two-part key) belongs to rows checked before it: a clash left
        # is the database's unique constraint to refuse, without a query per row
        return []

    def insert(self, section: str, rows: list[dict[str, Any]]) -> None:
        table = TABLES[section]
        decoded = [_decode(table, row) for row in rows]
        if section == "oauth_apps":
            self._adopt_orphans(decoded)
        try:
            for start in range(0, len(decoded), BATCH):
                self.conn.execute(table.insert(), decoded[start:start + BATCH])
        except sa.exc.IntegrityError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise Conflict(f"{section}: the database refuses a row of the backup ({reason})",
                           field=section) from None


    def _adopt_orphans(self, apps: list[dict[str, Any]]) -> None:
        """Another owner's app that a tenant's backup brought along (its connections use it)
        has no owner here when that owner was not restored: it becomes a platform app
        (owner none) rather than break the tenant's connections."""
        developers = {a["developer_id"] for a in apps if a.get("developer_id")}
        if developers:
            known = set(self.conn.execute(
                sa.select(accounts.c.id).where(accounts.c.id.in_(developers))).scalars())
            for app in apps:
                if app.get("developer_id") and app["developer_id"] not in known:
                    app["developer_id"] = None
        owners = {a["owner_tenant_id"] for a in apps if a.get("owner_tenant_id")}
        if not owners:
            return
        present = set(self.conn.execute(
            sa.select(t.tenants.c.id).where(t.tenants.c.id.in_(owners))).scalars())
        for app in apps:
            if app.get("owner_tenant_id") and app["owner_tenant_id"] not in present:
                app["owner_tenant_id"] = None


def backup_repo(uow: UnitOfWork) -> BackupRepo:
    conn: Connection = getattr(uow, "connection")  # noqa: B009 - SqlUnitOfWork only
    return SqlBackup(conn)
