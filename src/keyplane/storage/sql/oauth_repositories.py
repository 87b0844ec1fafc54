"""Repositories of connected apps over one SQLAlchemy connection (the unit of work's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SqlConnection
from sqlalchemy.engine import RowMapping

from keyplane.core.apps import (
    App,
    AppRepo,
    AppStatus,
    AuthorizationCode,
    ClientSecret,
    CodeRepo,
    ConnectedRepos,
    Connection,
    ConnectionRepo,
    OAuthToken,
    SessionRepo,
    TokenKind,
    TokenRepo,
    WebSession,
)
from keyplane.core.model import Page
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql import oauth_tables as o
from keyplane.storage.sql.repositories import _newest_first, _page


def _values(obj: Any, table: sa.Table) -> dict[str, Any]:
    out = {c.name: getattr(obj, c.name) for c in table.columns}
    for k, v in out.items():
        if isinstance(v, list):
            out[k] = list(v)
        elif hasattr(v, "value") and not isinstance(v, str | int):
            out[k] = v.value
    return out


class SqlApps:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    @staticmethod
    def _build(r: RowMapping) -> App:
        return App(
            id=r["id"], name=r["name"], description=r["description"], homepage=r["homepage"],
            redirect_uris=list(r["redirect_uris"]), scopes=list(r["scopes"]),
            status=AppStatus(r["status"]), created_at=r["created_at"],
            updated_at=r["updated_at"], owner_tenant_id=r["owner_tenant_id"],
            created_by=r["created_by"], client_id=r["client_id"], approved_at=r["approved_at"],
            status_reason=r["status_reason"], developer_id=r["developer_id"],
        )

    def add(self, app: App) -> None:
        row = _values(app, o.oauth_apps)
        row["status"] = app.status.value
        self.conn.execute(o.oauth_apps.insert().values(**row))

    def get(self, app_id: str) -> App | None:
        row = self.conn.execute(
            o.oauth_apps.select().where(o.oauth_apps.c.id == app_id)).mappings().first()
        return self._build(row) if row else None

    def by_client_id(self, client_id: str) -> App | None:
        row = self.conn.execute(
            o.oauth_apps.select().where(o.oauth_apps.c.client_id == client_id)
        ).mappings().first()
        return self._build(row) if row else None

    def update(self, app: App) -> None:
        row = _values(app, o.oauth_apps)
        row["status"] = app.status.value
        row.pop("id")
        self.conn.execute(o.oauth_apps.update().where(o.oauth_apps.c.id == app.id).values(**row))

    def page(self, *, owner_tenant_id: str | None, status: str | None, limit: int,
             cursor: str | None, developer_id: str | None = None) -> Page[App]:
        c = o.oauth_apps.c
        q = o.oauth_apps.select()
        if owner_tenant_id is not None:
            q = q.where(c.owner_tenant_id == owner_tenant_id)
        if developer_id is not None:
            q = q.where(c.developer_id == developer_id)
        if status:
            q = q.where(c.status == status)
        q = _newest_first(q, c.id, cursor, limit)
        return _page(list(self.conn.execute(q).mappings()), limit, self._build)

    @staticmethod
    def _build_secret(r: RowMapping) -> ClientSecret:
        return ClientSecret(id=r["id"], app_id=r["app_id"], digest=r["digest"],
                            pepper_id=r["pepper_id"], start=r["start"],
                            created_at=r["created_at"], expires_at=r["expires_at"])

    def add_secret(self, secret: ClientSecret) -> None:
        self.conn.execute(o.oauth_client_secrets.insert().values(
            **_values(secret, o.oauth_client_secrets)))

    def secrets(self, app_id: str) -> list[ClientSecret]:
        s = o.oauth_client_secrets
        q = s.select().where(s.c.app_id == app_id).order_by(s.c.id)
        return [self._build_secret(r) for r in self.conn.execute(q).mappings()]

    def update_secret(self, secret: ClientSecret) -> None:
        s = o.oauth_client_secrets
        self.conn.execute(s.update().where(s.c.id == secret.id).values(
            expires_at=secret.expires_at))

    def delete_secret(self, secret_id: str) -> None:
        s = o.oauth_client_secrets
        self.conn.execute(s.delete().where(s.c.id == secret_id))


class SqlCodes:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    def add(self, code: AuthorizationCode) -> None:
        self.conn.execute(o.oauth_codes.insert().values(**_values(code, o.oauth_codes)))

    def find(self, digest: str, *, for_update: bool = False) -> AuthorizationCode | None:
        q = o.oauth_codes.select().where(o.oauth_codes.c.digest == digest)
        if for_update:
            q = q.with_for_update()
        r = self.conn.execute(q).mappings().first()
        if r is None:
            return None
        return AuthorizationCode(**{c.name: r[c.name] for c in o.oauth_codes.columns})

    def update(self, code: AuthorizationCode) -> None:
        self.conn.execute(o.oauth_codes.update().where(o.oauth_codes.c.id == code.id).values(
            used_at=code.used_at, connection_id=code.connection_id))


class SqlConnections:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    @staticmethod
    def _build(r: RowMapping) -> Connection:
        values = {c.name: r[c.name] for c in o.oauth_connections.columns}
        values["scopes"] = list(values["scopes"])
        return Connection(**values)

    def add(self, connection: Connection) -> None:
        self.conn.execute(o.oauth_connections.insert().values(
            **_values(connection, o.oauth_connections)))

    def get(self, connection_id: str, *, for_update: bool = False) -> Connection | None:
        q = o.oauth_connections.select().where(o.oauth_connections.c.id == connection_id)
        if for_update:
            q = q.with_for_update()
        r = self.conn.execute(q).mappings().first()
        return self._build(r) if r else None

    def update(self, connection: Connection) -> None:
        c = o.oauth_connections.c
        self.conn.execute(o.oauth_connections.update().where(c.id == connection.id).values(
            revoked_at=connection.revoked_at, revoked_reason=connection.revoked_reason,
            scopes=list(connection.scopes), principal_id=connection.principal_id,
            expires_at=connection.expires_at))

    def active_for(self, tenant_id: str, app_id: str, principal_id: str,
                   at: datetime) -> Connection | None:
        """The live connection this admin gave this app in this tenant (the newest)."""
        c = o.oauth_connections.c
        q = o.oauth_connections.select().where(
            c.tenant_id == tenant_id, c.app_id == app_id, c.principal_id == principal_id,
            c.revoked_at.is_(None), c.expires_at > at).order_by(c.id.desc()).limit(1)
        r = self.conn.execute(q).mappings().first()
        return self._build(r) if r else None

    def page(self, tenant_id: str, *, active_at: datetime | None, limit: int,
             cursor: str | None) -> Page[Connection]:
        c = o.oauth_connections.c
        q = o.oauth_connections.select().where(c.tenant_id == tenant_id)
        if active_at is not None:
            q = q.where(c.revoked_at.is_(None), c.expires_at > active_at)
        q = _newest_first(q, c.id, cursor, limit)
        return _page(list(self.conn.execute(q).mappings()), limit, self._build)

    def ids_for_app(self, app_id: str) -> list[str]:
        c = o.oauth_connections.c
        return [i for (i,) in self.conn.execute(sa.select(c.id).where(c.app_id == app_id))]

    def connected(self, tenant_id: str, app_id: str) -> bool:
        c = o.oauth_connections.c
        return self.conn.execute(sa.select(c.id).where(
            c.tenant_id == tenant_id, c.app_id == app_id).limit(1)).first() is not None

    def record_usage(self, last_used: dict[str, datetime],
                     counts: dict[str, tuple[int, int]]) -> None:
        c = o.oauth_connections.c
        for cid in sorted(set(last_used) | set(counts)):
            ok, denied = counts.get(cid, (0, 0))
            values: dict[str, Any] = {"request_count": c.request_count + ok,
                                      "denied_count": c.denied_count + denied}
            at = last_used.get(cid)
            if at is not None:
                values["last_used_at"] = sa.case(
                    (sa.or_(c.last_used_at.is_(None), c.last_used_at < at), at),
                    else_=c.last_used_at,
                )
            self.conn.execute(o.oauth_connections.update().where(c.id == cid).values(**values))


class SqlTokens:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    def add(self, token: OAuthToken) -> None:
        row = _values(token, o.oauth_tokens)
        row["kind"] = token.kind.value
        self.conn.execute(o.oauth_tokens.insert().values(**row))

    def find(self, digest: str, *, for_update: bool = False) -> OAuthToken | None:
        q = o.oauth_tokens.select().where(o.oauth_tokens.c.digest == digest)
        if for_update:
            q = q.with_for_update()
        r = self.conn.execute(q).mappings().first()
        if r is None:
            return None
        values = {c.name: r[c.name] for c in o.oauth_tokens.columns}
        values["kind"] = TokenKind(values["kind"])
        values["scopes"] = list(values["scopes"])
        return OAuthToken(**values)

    def update(self, token: OAuthToken) -> None:
        t = o.oauth_tokens
        self.conn.execute(t.update().where(t.c.id == token.id).values(
            revoked_at=token.revoked_at, rotated_at=token.rotated_at))

    def revoke_connection(self, connection_id: str, at: datetime) -> int:
        t = o.oauth_tokens
        result = self.conn.execute(t.update().where(
            t.c.connection_id == connection_id, t.c.revoked_at.is_(None)).values(revoked_at=at))
        return int(result.rowcount or 0)


class SqlSessions:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    def add(self, session: WebSession) -> None:
        self.conn.execute(o.web_sessions.insert().values(**_values(session, o.web_sessions)))

    def find(self, digest: str) -> WebSession | None:
        r = self.conn.execute(
            o.web_sessions.select().where(o.web_sessions.c.digest == digest)
        ).mappings().first()
        if r is None:
            return None
        return WebSession(**{c.name: r[c.name] for c in o.web_sessions.columns})

    def update(self, session: WebSession) -> None:
        s = o.web_sessions
        self.conn.execute(s.update().where(s.c.id == session.id).values(
            revoked_at=session.revoked_at, expires_at=session.expires_at,
            second_factor_at=session.second_factor_at))

    def revoke_for_principal(self, principal_id: str, at: datetime, *,
                             keep: str | None = None) -> int:
        s = o.web_sessions
        q = s.update().where(s.c.principal_id == principal_id, s.c.revoked_at.is_(None))
        if keep is not None:
            q = q.where(s.c.id != keep)
        return int(self.conn.execute(q.values(revoked_at=at)).rowcount or 0)


class SqlConnectedRepos:
    def __init__(self, conn: SqlConnection) -> None:
        self.apps: AppRepo = SqlApps(conn)
        self.codes: CodeRepo = SqlCodes(conn)
        self.connections: ConnectionRepo = SqlConnections(conn)
        self.tokens: TokenRepo = SqlTokens(conn)
        self.sessions: SessionRepo = SqlSessions(conn)


def connected_repos(uow: UnitOfWork) -> ConnectedRepos:
    """The connected-app repositories bound to ``uow``'s transaction."""
    conn = getattr(uow, "connection", None)
    if not isinstance(conn, SqlConnection):
        raise TypeError("connected apps need a SQL unit of work inside its `with` block")
    return SqlConnectedRepos(conn)
