"""Console accounts outside any tenant: the operator's staff and partner developers.

    Account (kind operator | developer) ──< AccountSession     a browser signed in
         │
         └──< App (developer_id)                               a developer's partner apps

Operator staff act with the operator's rights (``CredentialKind.OPERATOR_SESSION``) and see the
operator pages only; a partner developer holds no management right at all and sees only the
apps it registered (``CredentialKind.DEVELOPER_SESSION``). Neither is a member of a tenant, so
no tenant role or group can ever lift a member to either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from keyplane.core.model import Page


class AccountKind(StrEnum):
    OPERATOR = "operator"
    DEVELOPER = "developer"


class PartnerSignup(StrEnum):
    """Who may create a partner developer account (``KEYPLANE_PARTNER_SIGNUP``)."""

    OPEN = "open"  # anyone, from /partners/signup
    INVITE = "invite"  # only with a link the operator's staff made (the default)
    CLOSED = "closed"  # nobody; the operator's staff register apps themselves


@dataclass
class Account:
    id: str
    kind: AccountKind
    email: str
    name: str
    password_hash: str
    created_at: datetime
    enabled: bool = True
    created_by: str = "system"


@dataclass
class AccountSession:
    """A signed-in console account. The cookie holds a random token; only its digest is kept."""

    id: str
    digest: str
    pepper_id: str
    account_id: str
    created_at: datetime
    expires_at: datetime
    ip: str | None = None
    revoked_at: datetime | None = None


class AccountRepo(Protocol):
    def add(self, account: Account) -> None: ...
    def get(self, account_id: str) -> Account | None: ...
    def by_email(self, kind: AccountKind, email: str) -> Account | None: ...
    def with_email(self, email: str) -> list[Account]: ...
    def update(self, account: Account) -> None: ...
    def page(self, kind: AccountKind, *, limit: int, cursor: str | None) -> Page[Account]: ...


class AccountSessionRepo(Protocol):
    def add(self, session: AccountSession) -> None: ...
    def find(self, digest: str) -> AccountSession | None: ...
    def update(self, session: AccountSession) -> None: ...
    def revoke_for_account(self, account_id: str, at: datetime) -> int: ...


class AccountRepos(Protocol):
    """The account repositories, bound to one unit of work's transaction."""

    accounts: AccountRepo
    sessions: AccountSessionRepo
