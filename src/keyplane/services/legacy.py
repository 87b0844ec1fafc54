"""Imported keys on the verification path: whether any key keeps a foreign format (so that a
string which is not in Keyplane's format may still be looked up), and the one-time upgrade of a
legacy digest (e.g. djangorestframework-api-key's) to Keyplane's keyed HMAC on first use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from keyplane.core import ids
from keyplane.core import legacy as lg
from keyplane.core.model import KeySecret
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import SYSTEM
from keyplane.services.context import Context

log = logging.getLogger("keyplane.verify")


class LegacyRepo(Protocol):
    def any_foreign(self) -> bool: ...
    def legacy(self, lookup: str, *, for_update: bool = False) -> tuple[str, str, str] | None: ...
    def upgraded(self, key_id: str, at: datetime) -> None: ...


class LegacyKeys:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], LegacyRepo]) -> None:
        self.ctx = ctx
        self.repos = repos

    def any_foreign(self) -> bool:
        with self.ctx.uow(readonly=True) as uow:
            return self.repos(uow).any_foreign()

    def upgrade(self, raw: str) -> bool:
        """If ``raw`` matches a key's legacy digest, store its Keyplane digest instead (one
        transaction, holding the row: concurrent first uses upgrade it once) and return True.
        Nothing is written for a string that matches nothing."""
        candidates = lg.lookups_of(raw)
        if not candidates:
            return False
        with self.ctx.uow(readonly=True) as uow:  # most strings match nothing: read first
            repo = self.repos(uow)
            found = [c for c in candidates if repo.legacy(c) is not None]
        for lookup in found:
            with self.ctx.uow() as uow:
                repo = self.repos(uow)
                row = repo.legacy(lookup, for_update=True)
                if row is None:  # another worker upgraded it meanwhile
                    return True
                key_id, scheme, digest = row
                if not lg.matches(scheme, raw, digest):
                    continue
                key = uow.keys.get_any(key_id)
                if key is None:
                    continue
                now = self.ctx.clock.now()
                hasher = self.ctx.hasher
                uow.keys.add_secret(KeySecret(
                    id=ids.new_id("sec"), key_id=key_id, digest=hasher.digest(raw),
                    pepper_id=hasher.current.id, start=key.start, created_at=now,
                    expires_at=None))
                repo.upgraded(key_id, now)
                self.ctx.audit(uow, SYSTEM, "key.digest_upgraded", key_id,
                               tenant_id=key.tenant_id, scheme=scheme)
                uow.commit()
                log.info("legacy_digest_upgraded key_id=%s scheme=%s", key_id, scheme)
                return True
        return False
