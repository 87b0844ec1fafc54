"""One-time share links: hand a secret to a developer through a link, never through chat.

The secret is sealed in the creator's browser or CLI (:mod:`keyplane.core.sealed`); the server
holds only ciphertext, and the key travels in the link's fragment, which browsers never send.
:meth:`ShareService.open` hands the ciphertext out once and deletes it in the same transaction,
so of two openings exactly one gets it. A link ends when opened, withdrawn or expired (default
24 hours, at most 7 days), whichever comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from keyplane.core import ids, sealed
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.model import Share
from keyplane.core.ports import SafetyRepos, UnitOfWork
from keyplane.core.rights import Caller
from keyplane.services import validate as v
from keyplane.services.context import Context

DEFAULT_SECONDS = 86400
MIN_SECONDS = 60
MAX_SECONDS = 7 * 86400
MAX_CIPHERTEXT = 16384  # base64url characters: a secret of up to about 12 KB
MAX_NOTE = 200
FIELDS = ("ciphertext", "expires_in_seconds", "note")


class ShareGone(Conflict):
    """The link was opened, withdrawn or has expired (its state is in ``code``)."""


class ShareService:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], SafetyRepos]) -> None:
        self.ctx = ctx
        self.repos = repos

    def _repos(self, uow: UnitOfWork) -> SafetyRepos:
        return self.repos(uow)

    def create(self, caller: Caller, tenant_id: str | None, body: dict[str, Any], *,
               operator: bool = False) -> Share:
        tid = None if operator else caller.tenant_for(tenant_id)
        caller.require("platform:write" if operator else "keys:write")
        v.only_fields(body, FIELDS)
        ciphertext = body.get("ciphertext")
        if not isinstance(ciphertext, str) or not ciphertext:
            raise ValidationError("ciphertext must be a string (base64url of iv, ciphertext "
                                  "and tag)", field="ciphertext")
        if len(ciphertext) > MAX_CIPHERTEXT:
            raise ValidationError(f"ciphertext must be at most {MAX_CIPHERTEXT} characters",
                                  field="ciphertext")
        if not sealed.well_formed(ciphertext):
            raise ValidationError("ciphertext must be unpadded base64url of iv (12 bytes), "
                                  "ciphertext and tag (16 bytes)", field="ciphertext")
        seconds = v.integer(body.get("expires_in_seconds", DEFAULT_SECONDS),
                            "expires_in_seconds", minimum=MIN_SECONDS, maximum=MAX_SECONDS)
        note = v.text(body.get("note"), "note", max_len=MAX_NOTE, required=False)
        now = self.ctx.clock.now()
        share = Share(id=ids.new_id("shr"), tenant_id=tid, created_by=caller.actor, note=note,
                      created_at=now, expires_at=now + timedelta(seconds=seconds),
                      ciphertext=ciphertext)
        with self.ctx.uow() as uow:
            repos = self._repos(uow)
            repos.shares.forget_expired(now)  # expired ciphertext is not kept
            repos.shares.add(share)
            self.ctx.audit(uow, caller, "share.created", share.id, tenant_id=tid,
                           expires_at=share.expires_at, note=note)
            uow.commit()
        return share

    def _mine(self, uow: UnitOfWork, caller: Caller, tenant_id: str | None, share_id: str,
              operator: bool, *, for_update: bool = False) -> Share:
        tid = None if operator else caller.tenant_for(tenant_id)
        share = self._repos(uow).shares.get(share_id, for_update=for_update)
        if share is None or share.tenant_id != tid:
            raise NotFound("no such share link")
        return share

    def get(self, caller: Caller, tenant_id: str | None, share_id: str, *,
            operator: bool = False) -> Share:
        """The link's metadata for its creator's tenant: never the ciphertext."""
        caller.require("platform:read" if operator else "keys:read")
        with self.ctx.uow(readonly=True) as uow:
            return self._mine(uow, caller, tenant_id, share_id, operator)

    def withdraw(self, caller: Caller, tenant_id: str | None, share_id: str, *,
                 operator: bool = False) -> Share:
        caller.require("platform:write" if operator else "keys:write")
        with self.ctx.uow() as uow:
            share = self._mine(uow, caller, tenant_id, share_id, operator, for_update=True)
            if share.opened_at is None and share.withdrawn_at is None:
                share.withdrawn_at = self.ctx.clock.now()
                share.ciphertext = None
                self._repos(uow).shares.update(share)
                self.ctx.audit(uow, caller, "share.withdrawn", share.id,
                               tenant_id=share.tenant_id)
            uow.commit()
        return share

    def look(self, share_id: str) -> tuple[str, Share | None]:
        """What the public page shows before anything is handed out: the state (``ready``,
        ``opened``, ``withdrawn``, ``expired`` or ``missing``) and the link. Consumes nothing."""
        with self.ctx.uow(readonly=True) as uow:
            share = self._repos(uow).shares.get(share_id)
        if share is None:
            return "missing", None
        return share.state(self.ctx.clock.now()), share

    def open(self, caller: Caller, share_id: str) -> str:
        """The ciphertext, once: it is deleted in the same transaction that hands it out.
        Raises :class:`NotFound` or :class:`ShareGone` (code: opened, withdrawn, expired)."""
        with self.ctx.uow() as uow:
            repos = self._repos(uow)
            share = repos.shares.get(share_id, for_update=True)
            if share is None:
                raise NotFound("no such share link")
            now = self.ctx.clock.now()
            state = share.state(now)
            if state != "ready":
                if state == "expired" and share.ciphertext is not None:
                    share.ciphertext = None
                    repos.shares.update(share)
                    uow.commit()
                raise ShareGone(GONE[state], code=state)
            ciphertext = share.ciphertext
            assert ciphertext is not None
            share.ciphertext = None
            share.opened_at = now
            repos.shares.update(share)
            self.ctx.audit(uow, caller, "share.opened", share.id, tenant_id=share.tenant_id)
            uow.commit()
        return ciphertext


GONE = {
    "opened": "This link has already been opened. Ask the sender for a new one.",
    "withdrawn": "This link was withdrawn by the sender.",
    "expired": "This link has expired. Ask the sender for a new one.",
    "missing": "There is no such link.",
}
