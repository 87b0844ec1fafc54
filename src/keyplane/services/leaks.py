"""Leaked credentials: a code host's secret-scanning report, or a person who found a secret in a
chat log, names raw secrets; each is looked up by digest and the tenant's policy is applied.

* a key is revoked at once (policy ``revoke``, the default) or locked (``lock``); operator keys
  are always revoked;
* an OAuth access or refresh token ends its whole connection (connections cannot be locked);
* the key keeps where and when it leaked (shown in its detail), and the audit log gets a
  ``key.leaked`` (or ``connection.leaked``) entry naming the URL and source, never the secret,
  with ``notify``: the owner and the tenant's admins. That audit action is the one hook point for
  notifications and events: whatever tells people subscribes to it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from keyplane.core import legacy as lg
from keyplane.core import tokens
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, ValidationError
from keyplane.core.model import ApiKey, KeyLeak, LeakAction, Role
from keyplane.core.ports import SafetyRepos, UnitOfWork
from keyplane.core.rights import Caller
from keyplane.services.connections import ConnectionService
from keyplane.services.context import Context

MAX_REPORTS = 1000
MAX_TOKEN = 1000
MAX_URL = 2000
MAX_SOURCE = 200
REPLAY_WINDOW = timedelta(hours=24)
LEAKED_ACTION = "key.leaked"  # the audit action events and notifications subscribe to
CONNECTION_LEAKED_ACTION = "connection.leaked"


@dataclass(frozen=True)
class LeakReport:
    """One secret found exposed: the secret, the scanner's type name, where, and by whom."""

    token: str
    type: str = ""
    url: str = ""
    source: str = ""


@dataclass(frozen=True)
class LeakOutcome:
    report: LeakReport
    found: bool  # a credential Keyplane issued (the scanner's "true_positive")
    kind: str | None = None  # "key", "access_token" or "refresh_token"
    id: str | None = None  # the key or connection
    tenant_id: str | None = None
    name: str | None = None
    action: str = "none"  # revoked, locked, already_revoked, already_locked, none

    @property
    def label(self) -> str:
        return "true_positive" if self.found else "false_positive"

    def out(self) -> dict[str, Any]:
        """What a person or script is told (never the secret)."""
        return {"label": self.label, "kind": self.kind, "id": self.id,
                "tenant_id": self.tenant_id, "name": self.name, "action": self.action}


def _clean(value: Any, limit: int) -> str:
    """Text from a report, fit to store and show: control characters dropped, then cut."""
    if not isinstance(value, str):
        return ""
    kept = "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cs"))
    return kept.strip()[:limit]


def parse_reports(payload: Any) -> list[LeakReport]:
    """``[{"token", "type", "url", "source"}]`` (GitHub's partner format) as reports."""
    if not isinstance(payload, list):
        raise ValidationError("the body must be a JSON array of reports", field="body")
    if len(payload) > MAX_REPORTS:
        raise ValidationError(f"at most {MAX_REPORTS} tokens per report", field="body")
    out = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict):
            raise ValidationError(f"[{i}] must be an object", field=f"{i}")
        token = item.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise ValidationError(f"[{i}].token must be a string of 1 to {MAX_TOKEN} "
                                  "characters", field=f"{i}.token")
        out.append(LeakReport(token=token, type=_clean(item.get("type"), MAX_SOURCE),
                              url=_clean(item.get("url"), MAX_URL),
                              source=_clean(item.get("source"), MAX_SOURCE)))
    return out


class LeakService:
    def __init__(self, ctx: Context, safety: Callable[[UnitOfWork], SafetyRepos],
                 connections: ConnectionService | None = None) -> None:
        """``connections``: the connected-app service (OAuth tokens), when installed."""
        self.ctx = ctx
        self.safety = safety
        self.connections = connections

    def handle(self, caller: Caller, reports: Sequence[LeakReport], *,
               replay_digest: str | None = None) -> list[LeakOutcome]:
        """Apply each report in one transaction. With ``replay_digest`` (the digest of a signed
        body) a body already accepted within the replay window is refused (409)."""
        with self.ctx.uow() as uow:
            if replay_digest is not None:
                repos = self.safety(uow)
                now = self.ctx.clock.now()
                repos.reports.forget_before(now - REPLAY_WINDOW)
                if not repos.reports.remember(replay_digest, now):
                    raise Conflict("this report was already received (a replayed body)",
                                   code="replayed_report")
            outcomes = [self._one(uow, caller, report) for report in reports]
            uow.commit()
        return outcomes

    # -- one secret -------------------------------------------------------------------------

    def _one(self, uow: UnitOfWork, caller: Caller, report: LeakReport) -> LeakOutcome:
        parsed = tokens.parse(report.token)
        if parsed is None and not lg.foreign_shape(report.token):
            return LeakOutcome(report, found=False)  # no storage touched
        # (a foreign-format string may be an imported key: looked up by its keyed digest)
        prefixes = self.connections.prefixes if self.connections is not None else None
        if parsed is not None and prefixes is not None and parsed.prefix in (
                prefixes.access_token, prefixes.refresh_token):
            return self._token(uow, caller, report)
        for _pid, digest in self.ctx.hasher.candidates(report.token):
            secret = uow.keys.find_secret(digest)
            if secret is not None:
                return self._key(uow, caller, report, secret.key_id)
        return LeakOutcome(report, found=False)

    def _recipients(self, uow: UnitOfWork, tenant_id: str | None,
                    owner_id: str | None) -> list[str]:
        """Who is told: the owner and the tenant's enabled admins."""
        told = [owner_id] if owner_id else []
        if tenant_id is None:
            return told
        cursor = None
        while True:
            page = uow.principals.page(tenant_id, kind="member", limit=200, cursor=cursor)
            told += [p.id for p in page.items
                     if p.role is Role.ADMIN and p.enabled and p.id not in told]
            cursor = page.next_cursor
            if cursor is None:
                return told

    def _key(self, uow: UnitOfWork, caller: Caller, report: LeakReport,
             key_id: str) -> LeakOutcome:
        found = uow.keys.get_any(key_id)
        key = uow.keys.get(found.tenant_id, key_id, for_update=True) if found else None
        if key is None:
            return LeakOutcome(report, found=False)
        now = self.ctx.clock.now()
        policy = LeakAction.REVOKE
        if key.tenant_id is not None:
            tenant = uow.tenants.get(key.tenant_id)
            if tenant is not None:
                policy = tenant.policy.leaked_key_action
        if key.revoked_at is not None:
            action = "already_revoked"
        elif policy is LeakAction.LOCK:
            action = "locked" if key.enabled else "already_locked"
        else:
            action = "revoked"
        if action == "revoked":
            key.revoked_at = now
            key.enabled = False
        elif action == "locked":
            key.enabled = False
        if key.leak is None:
            key.leak = KeyLeak(at=now, url=report.url, source=report.source)
        key.updated_at = now
        uow.keys.update(key)
        self._record(uow, caller, key, report, action)
        self.ctx.changed(uow, ChangeKind.KEY, key.id)
        return LeakOutcome(report, found=True, kind="key", id=key.id, tenant_id=key.tenant_id,
                           name=key.name, action=action)

    def _record(self, uow: UnitOfWork, caller: Caller, key: ApiKey, report: LeakReport,
                action: str) -> None:
        if action in ("revoked", "locked"):
            self.ctx.audit(uow, caller, f"key.{action}", key.id, tenant_id=key.tenant_id,
                           reason="leaked")
        notify = self._recipients(uow, key.tenant_id, key.owner_id)
        self.ctx.audit(uow, caller, LEAKED_ACTION, key.id, tenant_id=key.tenant_id,
                       url=report.url, source=report.source, type=report.type, response=action,
                       name=key.name, owner_id=key.owner_id, notify=notify)
        if action in ("revoked", "locked"):  # told once, when it happens
            done = ("It was revoked at once: it no longer works. Issue a new key for the "
                    "integration that used it." if action == "revoked" else
                    "It was locked: it does not work until an admin unlocks it. Rotate it, "
                    "then unlock it, or revoke it.")
            self.ctx.mail_after_commit(
                uow, self._emails(uow, key.tenant_id, notify),
                f"Keyplane: the API key {key.name!r} was found exposed",
                f"The secret of the API key {key.name!r} ({key.id}, tenant {key.tenant_id}) "
                f"was found exposed{' at ' + report.url if report.url else ''}"
                f"{' (reported by ' + report.source + ')' if report.source else ''}.\n\n"
                f"{done}\n\nThe key's page shows where and when it leaked.\n")

    @staticmethod
    def _emails(uow: UnitOfWork, tenant_id: str | None, principal_ids: list[str]) -> list[str]:
        """The email addresses of the people told (service accounts have none)."""
        if tenant_id is None:
            return []
        out = []
        for pid in principal_ids:
            principal = uow.principals.get(tenant_id, pid)
            if principal is not None and principal.enabled and principal.email:
                out.append(principal.email)
        return out

    def _token(self, uow: UnitOfWork, caller: Caller, report: LeakReport) -> LeakOutcome:
        conns = self.connections
        assert conns is not None
        repos = conns.repos(uow)
        token = conns.find_token(uow, repos, report.token)
        if token is None:
            return LeakOutcome(report, found=False)
        kind = f"{token.kind.value}_token"
        c = repos.connections.get(token.connection_id, for_update=True)
        if c is None:
            return LeakOutcome(report, found=False)
        action = "already_revoked"
        if c.revoked_at is None:
            conns.revoke_in(uow, repos, c, caller, reason="leaked")
            action = "revoked"
        self.ctx.audit(uow, caller, CONNECTION_LEAKED_ACTION, c.id, tenant_id=c.tenant_id,
                       url=report.url, source=report.source, type=report.type, response=action,
                       token_kind=kind, app_id=c.app_id,
                       notify=self._recipients(uow, c.tenant_id, c.principal_id))
        return LeakOutcome(report, found=True, kind=kind, id=c.id, tenant_id=c.tenant_id,
                           action=action)
