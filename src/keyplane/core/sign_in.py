"""People's own sign-in credentials beyond the password: one-time links (invitations and
password resets) and the TOTP second factor, with the storage ports that keep them.

A link's token is shown once (mailed, and shown to the admin who made it); only its keyed digest
is stored. A second factor's secret is stored sealed (AES-GCM under a server pepper), never in
clear, and its recovery codes only as digests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class LinkKind(StrEnum):
    INVITE = "invite"  # join a tenant as a new member with this email and role
    RESET = "reset"  # set a new password for an existing member


@dataclass
class OneTimeLink:
    id: str
    kind: LinkKind
    tenant_id: str
    digest: str
    pepper_id: str
    email: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    role: str | None = None  # invitations: the role the new member gets
    principal_id: str | None = None  # resets: whose password it sets
    used_at: datetime | None = None
    withdrawn_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        return self.used_at is None and self.withdrawn_at is None and now < self.expires_at


@dataclass
class SecondFactor:
    """A member's TOTP authenticator. ``confirmed_at`` is None until a first code proved the
    person's app holds the secret; only a confirmed factor is asked for at sign-in."""

    principal_id: str
    tenant_id: str
    sealed_secret: str
    created_at: datetime
    confirmed_at: datetime | None = None
    last_step: int = 0  # the newest time step a code was accepted for: no code is used twice
    recovery_digests: list[str] = field(default_factory=list)


class LinkRepo(Protocol):
    def add(self, link: OneTimeLink) -> None: ...
    def find(self, digest: str, *, for_update: bool = False) -> OneTimeLink | None: ...
    def get(self, tenant_id: str, link_id: str) -> OneTimeLink | None: ...
    def update(self, link: OneTimeLink) -> None: ...
    def pending(self, tenant_id: str, kind: LinkKind, now: datetime,
                email: str | None = None) -> list[OneTimeLink]: ...


class FactorRepo(Protocol):
    def get(self, principal_id: str, *, for_update: bool = False) -> SecondFactor | None: ...
    def put(self, factor: SecondFactor) -> None: ...
    def delete(self, principal_id: str) -> None: ...


class SignInRepos(Protocol):
    links: LinkRepo
    factors: FactorRepo
