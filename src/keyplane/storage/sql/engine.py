"""Engines and the unit of work: one transaction per use case, callbacks after commit.

A lost or refused database connection surfaces as :class:`~keyplane.core.errors.Unavailable`
(503 ``database_unavailable``), never as the driver's error (which may name the host); the
engine reports every connection lost and every connection checked out to a
:class:`~keyplane.core.outage.DatabaseHealth` (:func:`watch`). PostgreSQL connections are
pinged when checked out, so the pool reconnects by itself once the server is back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from keyplane.core.errors import Unavailable
from keyplane.core.outage import DatabaseHealth
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
from keyplane.storage.sql.outages import UNAVAILABLE, outage_as_unavailable, unreachable
from keyplane.storage.sql.repositories import (
    SqlChanges,
    SqlGroups,
    SqlKeys,
    SqlPrincipals,
    SqlScopes,
    SqlTenants,
)

CONNECT_TIMEOUT_SECONDS = 5
def watch(engine: Engine, health: DatabaseHealth) -> None:
    """Report to ``health`` each connection checked out (after PostgreSQL's pre-ping: the
    server answered) and each connection lost or refused."""

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(*_: Any) -> None:
        health.reachable()

    @sa.event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        if context.is_disconnect or unreachable(context.sqlalchemy_exception):
            health.unreachable()


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
    if "connect_timeout" not in url:  # a server that does not answer at all: fail in seconds
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
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
        with outage_as_unavailable():
            conn = self._engine.connect().execution_options(keyplane_readonly=self._readonly)
        try:
            with outage_as_unavailable():
                conn.begin()
        except BaseException:
            conn.close()
            raise
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
        lost = exc is not None and unreachable(exc)
        try:
            if conn.in_transaction():
                conn.rollback()
        except sa.exc.DBAPIError:
            if exc is None:
                raise
            # the connection died with the error being raised: that error is the one to report
        finally:
            conn.close()
        if lost:
            raise Unavailable(UNAVAILABLE, code="database_unavailable") from None

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
