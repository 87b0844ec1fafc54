"""Key hygiene: the report of a tenant's keys that need attention (``GET /v1/reports/keys``,
``keyplane keys report``), and the unused-key policy (``revoke_unused_after_days``): a job that
warns owners, then revokes keys unused that long. The job runs on a timer in every instance and
takes a database lease first, so one instance among many runs it per interval."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from keyplane.core import hygiene as hy
from keyplane.core.errors import NotFound, ValidationError
from keyplane.core.model import ApiKey, Page
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import SYSTEM, Caller
from keyplane.core.views import key_view, ts
from keyplane.services.context import Context
from keyplane.services.keys import KeyService
from keyplane.services.periodic import Timer, lease_owner

log = logging.getLogger("keyplane.hygiene")

JOB = "unused_keys"
ACTOR = replace(SYSTEM, name="policy:revoke_unused")
SCAN_BATCH = 500  # keys read per query while filling a report page


class HygieneRepo(Protocol):
    def live_keys(self, tenant_id: str, *, cursor: str | None,
                  limit: int) -> list[tuple[ApiKey, bool]]: ...
    def policy_tenants(self) -> list[tuple[str, int]]: ...
    def scopes_used(self, key_ids: list[str], since: datetime) -> dict[str, set[str]]: ...
    def idle_keys(self, tenant_id: str, *, warn_since: datetime, revoke_since: datetime,
                  warned_before: datetime) -> list[str]: ...
    def warned_at(self, key_id: str) -> datetime | None: ...
    def set_warned(self, key_id: str, at: datetime) -> None: ...
    def claim(self, job: str, owner: str, now: datetime, until: datetime) -> bool: ...


@dataclass(frozen=True)
class Flagged:
    key: ApiKey
    reasons: list[hy.Reason]
    unused_scopes: list[str] | None = None  # with scopes_unused


@dataclass
class PolicyRun:
    """What one run of the unused-key policy did (None from ``run`` when another instance
    holds the lease)."""

    warned: list[str]
    revoked: list[str]


class HygieneService:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], HygieneRepo],
                 keys: KeyService, *,
                 interval: timedelta = timedelta(hours=1),
                 before_run: Sequence[Callable[[], object]] = (),
                 after_run: Sequence[Callable[[], object]] = ()) -> None:
        self.ctx = ctx
        self.repos = repos
        self.keys = keys  # one way to revoke a key
        self.interval = interval
        self.owner = lease_owner()
        self.before_run = tuple(before_run)  # e.g. flush this process's usage
        self.after_run = tuple(after_run)  # e.g. the audit log's retention
        self._timer = Timer("keyplane-hygiene", interval, lambda: self.run(), log,
                            "unused-key policy run failed; will retry")

    # -- the report --------------------------------------------------------------------------

    def report(self, caller: Caller, tenant_id: str | None, *,
               thresholds: hy.Thresholds = hy.Thresholds(), reason: str | None = None,
               limit: int = 50, cursor: str | None = None) -> Page[Flagged]:
        """The tenant's live keys with at least one reason (or ``reason``), newest first,
        paged by key id like ``GET /v1/keys``."""
        tid = caller.tenant_for(tenant_id)
        caller.require("keys:read")
        wanted = None
        if reason is not None:
            if reason not in hy.REASONS:
                raise ValidationError(f"reason must be one of {', '.join(hy.REASONS)}",
                                      field="reason")
            wanted = hy.Reason(reason)
        now = self.ctx.clock.now()
        items: list[Flagged] = []
        with self.ctx.uow(readonly=True) as uow:
            if uow.tenants.get(tid) is None:
                raise NotFound("no such tenant")
            repo = self.repos(uow)
            after = cursor
            while len(items) <= limit:
                batch = repo.live_keys(tid, cursor=after, limit=SCAN_BATCH)
                used = repo.scopes_used([k.id for k, _ in batch],
                                        now - timedelta(days=thresholds.unused_days))
                for key, owner_enabled in batch:
                    scopes = used.get(key.id)
                    found = hy.reasons(key, now, thresholds, owner_enabled=owner_enabled,
                                       used_scopes=scopes)
                    if found and (wanted is None or wanted in found):
                        unused = (hy.unused_scopes(key.scopes, scopes)
                                  if scopes and hy.Reason.SCOPES_UNUSED in found else None)
                        items.append(Flagged(key, found, unused))
                        if len(items) > limit:
                            break
                if len(batch) < SCAN_BATCH:
                    break
                after = batch[-1][0].id
        more = len(items) > limit
        items = items[:limit]
        return Page(items=items, next_cursor=items[-1].key.id if more and items else None)

    # -- the unused-key policy ---------------------------------------------------------------

    def run(self, *, force: bool = False) -> PolicyRun | None:
        """One run of the policy over every tenant that has it. Takes the job's lease for an
        interval first (``force``: runs even if another instance ran it within the interval);
        None when another instance holds it. Each key is decided again in its own transaction,
        holding its row, so overlapping runs still warn and revoke each key once."""
        now = self.ctx.clock.now()
        with self.ctx.uow() as uow:
            claimed = self.repos(uow).claim(JOB, self.owner, now, now + self.interval)
            uow.commit()
        if not claimed and not force:
            return None
        for hook in self.before_run:
            hook()
        done = PolicyRun(warned=[], revoked=[])
        with self.ctx.uow(readonly=True) as uow:
            tenants = self.repos(uow).policy_tenants()
        for tenant_id, days in tenants:
            now = self.ctx.clock.now()
            period, lead = timedelta(days=days), hy.warn_lead(days)
            with self.ctx.uow(readonly=True) as uow:  # a first cut; each key decided again
                candidates = self.repos(uow).idle_keys(
                    tenant_id, warn_since=now - (period - lead), revoke_since=now - period,
                    warned_before=now - lead)
            for key_id in candidates:
                try:
                    step = self._apply(tenant_id, key_id)
                except Exception:  # one key's failure never stops the others
                    log.exception("unused-key policy failed for %s", key_id)
                    continue
                if step is hy.Step.WARN:
                    done.warned.append(key_id)
                elif step is hy.Step.REVOKE:
                    done.revoked.append(key_id)
        if done.warned or done.revoked:
            log.info("unused-key policy: %d warned, %d revoked", len(done.warned),
                     len(done.revoked))
        for hook in self.after_run:
            try:
                hook()
            except Exception:  # a later job's failure never undoes this run
                log.exception("hygiene job %s failed", getattr(hook, "__name__", hook))
        return done

    def _apply(self, tenant_id: str, key_id: str) -> hy.Step:
        with self.ctx.uow() as uow:
            tenant = uow.tenants.get(tenant_id)
            days = tenant.policy.revoke_unused_after_days if tenant else None
            key = uow.keys.get(tenant_id, key_id, for_update=True)
            if key is None or days is None or tenant is None or not tenant.enabled:
                return hy.Step.NONE
            repo = self.repos(uow)
            now = self.ctx.clock.now()
            step = hy.unused_step(key, now, days, repo.warned_at(key.id))
            activity = hy.last_activity(key)
            if step is hy.Step.WARN:
                repo.set_warned(key.id, now)
                revoke_at = max(activity + timedelta(days=days), now + hy.warn_lead(days))
                self.ctx.audit(uow, ACTOR, "key.unused_warning", key.id, tenant_id=tenant_id,
                               owner_id=key.owner_id, notify=[key.owner_id] if key.owner_id
                               else [], unused_since=ts(activity), revoke_at=ts(revoke_at),
                               subject={**key_view(key), "unused_since": ts(activity),
                                        "revoke_at": ts(revoke_at)})
                self._warn_owner(uow, key, activity, revoke_at)
            elif step is hy.Step.REVOKE:
                self.keys.revoke_loaded(uow, ACTOR, key, "unused", owner_id=key.owner_id,
                                        unused_since=ts(activity), policy_days=days)
            else:
                return step
            uow.commit()
            return step

    def _warn_owner(self, uow: UnitOfWork, key: ApiKey, activity: datetime,
                    revoke_at: datetime) -> None:
        """Emails the owner (after commit) that the key will be revoked unless it is used."""
        if key.tenant_id is None or key.owner_id is None:
            return
        owner = uow.principals.get(key.tenant_id, key.owner_id)
        if owner is None or not owner.enabled or not owner.email:
            return
        used = ("has not been used since " + activity.strftime("%Y-%m-%d %H:%M UTC")
                if key.last_used_at is not None else "has never been used since it was "
                "created on " + activity.strftime("%Y-%m-%d"))
        self.ctx.mail_after_commit(
            uow, [owner.email], f"Keyplane: the API key {key.name!r} will be revoked",
            f"The API key {key.name!r} ({key.id}, tenant {key.tenant_id}) {used}.\n\n"
            "Your tenant revokes keys that stay unused: this key will be revoked on "
            f"{revoke_at.strftime('%Y-%m-%d %H:%M UTC')} unless it is used before then.\n\n"
            "If nothing needs it any more, revoke it now; a key nobody uses is only a "
            "risk.\n")

    # -- the timer ---------------------------------------------------------------------------

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()


def flagged_view(item: Flagged) -> dict[str, Any]:
    """A report entry as the API and ``--json`` show it."""
    out: dict[str, Any] = {"key": key_view(item.key),
                           "reasons": [r.value for r in item.reasons]}
    if item.unused_scopes is not None:
        out["unused_scopes"] = item.unused_scopes
    return out
