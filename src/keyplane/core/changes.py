"""What changed: the record every use case writes to the durable change log in its transaction,
and the marker that tells listeners of the in-process bus where a change came from.

A change names one object by kind and id (``ref``). Verifiers drop what they cached of it;
SDKs following ``GET /v1/changes`` do the same. The kinds are a closed set: a row of the log whose
kind this version does not know (written by a newer one during a rolling upgrade) is read as a
reset, which drops everything and names nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ChangeKind(StrEnum):
    KEY = "key"
    PRINCIPAL = "principal"  # a member or service account: its keys follow its rights
    TENANT = "tenant"
    CONNECTION = "connection"  # a connected app's grant (its access tokens)
    APP = "app"  # a registered app (its status ends or restores its connections' tokens)
    CATALOGUE = "catalogue"  # the operator's scope catalogue
    IMPORT = "import"  # keys imported in a foreign format (ref: the tenant)
    ALL = "all"  # drop every cached verification (ref: "*")

    @classmethod
    def of(cls, value: object) -> ChangeKind | None:
        """The kind named ``value`` (as stored or sent on the wire), or ``None``."""
        if not isinstance(value, str):
            return None
        try:
            return cls(value)
        except ValueError:
            return None


RESET = ChangeKind.ALL
"""The kind of a synthetic change meaning "drop every cached verification"."""

GENERIC_KINDS = frozenset({ChangeKind.CATALOGUE, ChangeKind.ALL})
"""Changes that concern every tenant and name nothing of any tenant (the operator's scope
catalogue, "drop everything"). An ``app`` is not one of them: its id is the registering tenant's
own, so its changes go to the tenants it concerns (see :class:`Change`)."""


@dataclass(frozen=True, slots=True)
class Change:
    position: int
    kind: ChangeKind
    ref: str
    tenant_id: str | None = None  # the tenant the change belongs to, when there is one
    # other tenants it concerns: for an ``app``, those with a connection to it (their cached
    # access tokens depend on the app's status)
    also: frozenset[str] = frozenset()
    at: datetime | None = None  # when it was written to the log (for the invalidation lag)

    @classmethod
    def logged(cls, position: int, kind: str, ref: str, tenant_id: str | None = None,
               also: frozenset[str] = frozenset(), at: datetime | None = None) -> Change:
        """A row of the durable log. An unknown kind becomes a reset that names nothing: every
        cache drops everything, and no tenant learns another's ids."""
        known = ChangeKind.of(kind)
        if known is None:
            return cls(position, RESET, "*", None, frozenset(), at)
        return cls(position, known, ref, tenant_id, also, at)

    def visible_to(self, tenant_id: str | None) -> bool:
        """Operator verifiers (``None``) see everything; a tenant's verifier sees its own
        tenant's changes, the changes that concern it (``also``) and the generic ones, and
        never a ref that belongs to another tenant only."""
        return (tenant_id is None or self.kind in GENERIC_KINDS or self.tenant_id == tenant_id
                or tenant_id in self.also)

    def as_json(self) -> dict[str, object]:
        return {"position": self.position, "kind": self.kind.value, "ref": self.ref}


def heard(kind: str, ref: str) -> tuple[ChangeKind, str]:
    """A change as another process sent it: an unknown kind becomes a reset."""
    known = ChangeKind.of(kind)
    return (RESET, "*") if known is None else (known, ref)


_remote = threading.local()


@contextlib.contextmanager
def remote_delivery() -> Iterator[None]:
    """Marks bus publishes that came from another process (Redis, the change-log poller), so
    that fan-out does not send them back out."""
    previous = getattr(_remote, "active", False)
    _remote.active = True
    try:
        yield
    finally:
        _remote.active = previous


def is_remote_delivery() -> bool:
    return bool(getattr(_remote, "active", False))
