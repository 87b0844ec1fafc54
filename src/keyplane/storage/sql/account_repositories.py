"""Repositories of console accounts and their sessions over one unit of work's connection."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection as SqlConnection
from sqlalchemy.engine import RowMapping

from keyplane.core.accounts import (
    Account,
    AccountKind,
    AccountRepo,
    AccountRepos,
    AccountSession,
    AccountSessionRepo,
)
from keyplane.core.model import Page
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql.account_tables import account_sessions, accounts
from keyplane.storage.sql.repositories import _newest_first, _page


class SqlAccounts:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    @staticmethod
    def _build(r: RowMapping) -> Account:
        return Account(id=r["id"], kind=AccountKind(r["kind"]), email=r["email"], name=r["name"],
                       password_hash=r["password_hash"], created_at=r["created_at"],
                       enabled=r["enabled"], created_by=r["created_by"])

    @staticmethod
    def _row(account: Account) -> dict[str, object]:
        return {"id": account.id, "kind": account.kind.value, "email": account.email,
                "name": account.name, "password_hash": account.password_hash,
                "enabled": account.enabled, "created_at": account.created_at,
                "created_by": account.created_by}

    def add(self, account: Account) -> None:
        self.conn.execute(accounts.insert().values(**self._row(account)))

    def get(self, account_id: str) -> Account | None:
        r = self.conn.execute(accounts.select().where(accounts.c.id == account_id)
                              ).mappings().first()
        return self._build(r) if r else None

    def by_email(self, kind: AccountKind, email: str) -> Account | None:
        r = self.conn.execute(accounts.select().where(
            accounts.c.kind == kind.value, accounts.c.email == email)).mappings().first()
        return self._build(r) if r else None

    def with_email(self, email: str) -> list[Account]:
        q = accounts.select().where(accounts.c.email == email).order_by(accounts.c.id)
        return [self._build(r) for r in self.conn.execute(q).mappings()]

    def update(self, account: Account) -> None:
        row = self._row(account)
        row.pop("id")
        self.conn.execute(accounts.update().where(accounts.c.id == account.id).values(**row))

    def page(self, kind: AccountKind, *, limit: int, cursor: str | None) -> Page[Account]:
        q = _newest_first(accounts.select().where(accounts.c.kind == kind.value),
                          accounts.c.id, cursor, limit)
        return _page(list(self.conn.execute(q).mappings()), limit, self._build)


class SqlAccountSessions:
    def __init__(self, conn: SqlConnection) -> None:
        self.conn = conn

    def add(self, session: AccountSession) -> None:
        self.conn.execute(account_sessions.insert().values(
            {c.name: getattr(session, c.name) for c in account_sessions.columns}))

    def find(self, digest: str) -> AccountSession | None:
        r = self.conn.execute(account_sessions.select().where(
            account_sessions.c.digest == digest)).mappings().first()
        if r is None:
            return None
        return AccountSession(**{c.name: r[c.name] for c in account_sessions.columns})

    def update(self, session: AccountSession) -> None:
        s = account_sessions
        self.conn.execute(s.update().where(s.c.id == session.id).values(
            revoked_at=session.revoked_at, expires_at=session.expires_at))

    def revoke_for_account(self, account_id: str, at: datetime) -> int:
        s = account_sessions
        q = s.update().where(s.c.account_id == account_id, s.c.revoked_at.is_(None))
        return int(self.conn.execute(q.values(revoked_at=at)).rowcount or 0)


class SqlAccountRepos:
    def __init__(self, conn: SqlConnection) -> None:
        self.accounts: AccountRepo = SqlAccounts(conn)
        self.sessions: AccountSessionRepo = SqlAccountSessions(conn)


def account_repos(uow: UnitOfWork) -> AccountRepos:
    """The account repositories bound to ``uow``'s transaction."""
    conn = getattr(uow, "connection", None)
    if not isinstance(conn, SqlConnection):
        raise TypeError("console accounts need a SQL unit of work inside its `with` block")
    return SqlAccountRepos(conn)
