"""Engines and the unit of work: one transaction per use case, callbacks after commit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from keyplane.core.ports import (
    AuditRepo,
    ChangeRepo,
    Clock,
    GroupRepo,
    KeyRepo,
    PrincipalRepo,
    ScopeRepo,
    TenantRepo,
    UnitOfWork,
)
from keyplane.files import private_file
from keyplane.storage.sql.audit import SqlAudit
from keyplane.storage.sql.repositories import (
    SqlChanges,
    SqlGroups,
    SqlKeys,
    SqlPrincipals,
    SqlScopes,
    SqlTenants,
)


def make_engine(url: str, *, pool_size: int = 10, schema: str | None = None) -> Engine:
    """An engine for SQLite (WAL, foreign keys, immediate write transactions) or PostgreSQL."""
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            private_file(Path(path))  # 0600 before SQLite writes to it; -wal/-shm follow
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=pool_size,
            max_overflow=pool_size,
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            readonly = conn.get_execution_options().get("keyplane_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    return sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        connect_args=connect_args,
    )


class SqlUnitOfWork:
    """A transaction with the repositories bound to it.

    ``commit()`` makes the change durable and then runs ``after_commit`` callbacks (cache
    invalidation): a revocation is never published before it is durable. Leaving the block
    without ``commit()`` rolls everything back.
    """

    tenants: TenantRepo
    principals: PrincipalRepo
    groups: GroupRepo
    keys: KeyRepo
    scopes: ScopeRepo
    audit: AuditRepo
    changes: ChangeRepo

    def __init__(self, engine: Engine, clock: Clock, *, readonly: bool = False) -> None:
        self._engine = engine
        self._clock = clock
        self._readonly = readonly
        self._callbacks: list[Callable[[], None]] = []
        self._conn: Connection | None = None

    def __enter__(self) -> UnitOfWork:
        conn = self._engine.connect().execution_options(keyplane_readonly=self._readonly)
        conn.begin()
        self._conn = conn
        self.tenants = SqlTenants(conn)
        self.principals = SqlPrincipals(conn)
        self.groups = SqlGroups(conn)
        self.keys = SqlKeys(conn)
        self.scopes = SqlScopes(conn)
        self.audit = SqlAudit(conn)
        self.changes = SqlChanges(conn, self._clock.now)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
        finally:
            conn.close()

    def commit(self) -> None:
        assert self._conn is not None, "commit outside the unit of work"
        self.audit.flush()  # the hash-chained entries, last: see SqlAudit.flush
        self._conn.commit()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for repositories that live in other modules."""
        assert self._conn is not None, "connection outside the unit of work"
        return self._conn
