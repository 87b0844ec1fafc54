"""Reading the durable change log for the change feed, with the tenant each change belongs to
(so that a tenant's verifier only follows its own tenant's changes).

An ``app`` change belongs to the tenant that registered the app (none for the operator's own
apps) and also concerns every tenant with a connection to it: suspending an app ends those
connections' tokens, and their verifiers drop cached tokens by app id. No other tenant learns
the app's id."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from keyplane.core.changes import Change
from keyplane.storage.sql import tables as t
from keyplane.storage.sql.oauth_tables import oauth_apps, oauth_connections


class SqlChangeSource:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        c, k, p = t.changes.c, t.api_keys.c, t.principals.c
        oc, oa = oauth_connections.c, oauth_apps.c
        tenant = sa.case(
            (c.kind == "tenant", c.ref),
            (c.kind == "key", k.tenant_id),
            (c.kind == "principal", p.tenant_id),
            (c.kind == "connection", oc.tenant_id),
            (c.kind == "app", oa.owner_tenant_id),
            else_=sa.null(),
        )
        joined = (
            t.changes.outerjoin(t.api_keys, sa.and_(c.kind == "key", k.id == c.ref))
            .outerjoin(t.principals, sa.and_(c.kind == "principal", p.id == c.ref))
            .outerjoin(oauth_connections, sa.and_(c.kind == "connection", oc.id == c.ref))
            .outerjoin(oauth_apps, sa.and_(c.kind == "app", oa.id == c.ref))
        )
        self._query = (
            sa.select(c.id, c.kind, c.ref, tenant.label("tenant_id"), c.at)
            .select_from(joined)
            .where(c.id > sa.bindparam("after"))
            .order_by(c.id)
            .limit(sa.bindparam("limit"))
        )

    def _connect(self) -> Any:
        return self.engine.connect().execution_options(keyplane_readonly=True)

    def head(self) -> int:
        with self._connect() as conn:
            value = conn.execute(sa.select(sa.func.max(t.changes.c.id))).scalar()
        return int(value or 0)

    def prune(self, keep: int) -> int:
        """Deletes all but the newest ``keep`` rows of the log; returns how many went.

        Readers further behind than that get a reset (``kind: all``) rather than a replay, so
        old rows are never needed again.
        """
        c = t.changes.c
        with self.engine.connect() as conn, conn.begin():
            head = conn.execute(sa.select(sa.func.max(c.id))).scalar()
            if head is None or int(head) <= keep:
                return 0
            result = conn.execute(t.changes.delete().where(c.id <= int(head) - keep))
            return int(result.rowcount or 0)

    def read(self, after: int, limit: int) -> list[Change]:
        with self._connect() as conn:
            rows = conn.execute(self._query, {"after": after, "limit": limit}).all()
            apps = sorted({row.ref for row in rows if row.kind == "app"})
            connected = self._connected_tenants(conn, apps) if apps else {}
        return [Change.logged(int(i), kind, ref, tenant,
                       connected.get(ref, frozenset()) if kind == "app" else frozenset(), at)
                for i, kind, ref, tenant, at in rows]

    @staticmethod
    def _connected_tenants(conn: Any, app_ids: list[str]) -> dict[str, frozenset[str]]:
        """The tenants with a connection (live or ended) to each of these apps."""
        oc = oauth_connections.c
        found: dict[str, set[str]] = {}
        query = sa.select(oc.app_id, oc.tenant_id).where(oc.app_id.in_(app_ids)).distinct()
        for app_id, tenant_id in conn.execute(query):
            found.setdefault(app_id, set()).add(tenant_id)
        return {app_id: frozenset(tenants) for app_id, tenants in found.items()}
