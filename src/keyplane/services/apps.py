"""Partner apps: registration, the operator's decision, client secrets and their rotation.

Who may register an app: a tenant credential that holds ``tenant:write`` (an admin's management
key or session: the partner's own Keyplane tenant owns the app), a partner developer signed in
to the console (the developer owns it, and sees only its own apps) or the operator
(``platform:write``). Every app starts ``pending``; only the operator approves, rejects or
suspends. The first approval issues the ``client_id`` and a client secret that is shown once
(in the approval response); the owner or the operator can rotate the secret later, with a grace
period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyplane.core import ids, tokens
from keyplane.core.apps import (
    App,
    AppStatus,
    ClientSecret,
    ConnectedRepos,
    CredentialPrefixes,
    app_scopes,
    redirect_uris,
    transition,
    web_uri,
)
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.model import Page
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services import validate as v
from keyplane.services.context import Context

REGISTER_FIELDS = ("name", "description", "homepage", "redirect_uris", "scopes")
DEFAULT_GRACE_SECONDS = 7 * 86400
Repos = Callable[[UnitOfWork], ConnectedRepos]


@dataclass(frozen=True)
class IssuedSecret:
    """An app with a client secret: returned once, by approval and by rotation."""

    app: App
    secret: str
    secret_expires_previous_at: datetime | None = None


class AppService:
    def __init__(self, ctx: Context, repos: Repos, prefixes: CredentialPrefixes) -> None:
        self.ctx = ctx
        self.repos = repos
        self.prefixes = prefixes

    # -- who sees what --------------------------------------------------------------------

    def _owner_scope(self, caller: Caller, tenant_id: str | None, permission: str) -> str | None:
        """``None``: the operator, seeing every app, or a partner developer (whose apps
        :meth:`_developer` names); otherwise the tenant whose apps these are."""
        if caller.is_operator:
            caller.require(f"platform:{permission}")
            return tenant_id or None
        if self._developer(caller) is not None:
            if tenant_id:
                raise NotFound("no such tenant")
            return None
        tid = caller.tenant_for(tenant_id)
        caller.require(f"tenant:{permission}")
        return tid

    @staticmethod
    def _developer(caller: Caller) -> str | None:
        """The partner developer acting, who owns (and sees) only the apps it registered."""
        if caller.kind is CredentialKind.DEVELOPER_SESSION and caller.account_id:
            return caller.account_id
        return None

    def _load(self, repos: ConnectedRepos, caller: Caller, tenant_id: str | None,
              app_id: str, permission: str) -> App:
        owner = self._owner_scope(caller, tenant_id, permission)
        developer = self._developer(caller)
        app = repos.apps.get(app_id)
        if app is None or (owner is not None and app.owner_tenant_id != owner) or (
                developer is not None and app.developer_id != developer):
            raise NotFound("no such app")
        return app

    # -- use cases --------------------------------------------------------------------------

    def register(self, caller: Caller, tenant_id: str | None, body: dict[str, Any]) -> App:
        owner = self._owner_scope(caller, tenant_id, "write")
        v.only_fields(body, REGISTER_FIELDS)
        name = v.text(body.get("name"), "name", max_len=v.MAX_NAME)
        description = v.text(body.get("description"), "description",
                             max_len=v.MAX_DESCRIPTION, required=False)
        homepage = web_uri(body.get("homepage"), "homepage")
        uris = redirect_uris(body.get("redirect_uris"))
        scopes = app_scopes(body.get("scopes"), self.ctx.catalogue())
        now = self.ctx.clock.now()
        app = App(id=ids.new_id("app"), name=name, description=description, homepage=homepage,
                  redirect_uris=uris, scopes=scopes, status=AppStatus.PENDING, created_at=now,
                  updated_at=now, owner_tenant_id=owner, created_by=caller.actor,
                  developer_id=self._developer(caller))
        with self.ctx.uow() as uow:
            if owner is not None and uow.tenants.get(owner) is None:
                raise NotFound("no such tenant")
            self.repos(uow).apps.add(app)
            self.ctx.audit(uow, caller, "app.registered", app.id, tenant_id=owner, name=name,
                           scopes=scopes, redirect_uris=uris)
            uow.commit()
        return app

    def get(self, caller: Caller, tenant_id: str | None, app_id: str) -> App:
        with self.ctx.uow(readonly=True) as uow:
            return self._load(self.repos(uow), caller, tenant_id, app_id, "read")

    def decide(self, caller: Caller, app_id: str, action: str,
               reason: str | None = None) -> tuple[App, str | None]:
        """The operator approves, rejects or suspends an app. The first approval returns the
        client secret (shown once); other decisions return ``None`` for it."""
        caller.require("platform:write")
        note = v.text(reason, "reason", max_len=v.MAX_DESCRIPTION, required=False)
        raw: str | None = None
        with self.ctx.uow() as uow:
            repos = self.repos(uow)
            app = repos.apps.get(app_id)
            if app is None:
                raise NotFound("no such app")
            app.status = transition(app.status, action)
            now = self.ctx.clock.now()
            app.updated_at = now
            app.status_reason = note
            if action == "approve":
                app.approved_at = now
                if app.client_id is None:
                    app.client_id = ids.new_id("cli")
                    raw, secret = self._new_secret(app.id, now)
                    repos.apps.add_secret(secret)
            repos.apps.update(app)
            self.ctx.audit(uow, caller, f"app.{app.status.value}", app.id,
                           tenant_id=app.owner_tenant_id, reason=note, client_id=app.client_id)
            # tokens of every connection of this app are checked against the app's status
            self.ctx.changed(uow, ChangeKind.APP, app.id)
            uow.commit()
        return app, raw

    def rotate_secret(self, caller: Caller, tenant_id: str | None, app_id: str,
                      body: dict[str, Any]) -> IssuedSecret:
        """A new client secret; the previous one works until the grace ends (0: now). At most
        two secrets at any time, and the old one never outlives a second rotation."""
        v.only_fields(body, ("grace_period_seconds",))
        grace = v.integer(body.get("grace_period_seconds", DEFAULT_GRACE_SECONDS),
                          "grace_period_seconds", minimum=0, maximum=v.MAX_GRACE_SECONDS)
        with self.ctx.uow() as uow:
            repos = self.repos(uow)
            app = self._load(repos, caller, tenant_id, app_id, "write")
            if app.client_id is None or app.status not in (AppStatus.APPROVED,
                                                           AppStatus.SUSPENDED):
                raise Conflict("only an approved app has a client secret to rotate",
                               field="status", code="invalid_status")
            now = self.ctx.clock.now()
            deadline = now + timedelta(seconds=grace)
            previous: datetime | None = None
            for old in repos.apps.secrets(app.id):
                if old.expires_at is not None or grace == 0:
                    repos.apps.delete_secret(old.id)
                else:
                    old.expires_at = previous = deadline
                    repos.apps.update_secret(old)
            raw, secret = self._new_secret(app.id, now)
            repos.apps.add_secret(secret)
            app.updated_at = now
            repos.apps.update(app)
            self.ctx.audit(uow, caller, "app.secret_rotated", app.id,
                           tenant_id=app.owner_tenant_id, grace_period_seconds=grace)
            uow.commit()
        return IssuedSecret(app=app, secret=raw, secret_expires_previous_at=previous)

    # -- client authentication --------------------------------------------------------------

    def _new_secret(self, app_id: str, now: datetime) -> tuple[str, ClientSecret]:
        raw = tokens.generate(self.prefixes.client_secret)
        parsed = tokens.parse(raw)
        assert parsed is not None
        return raw, ClientSecret(id=ids.new_id("cls"), app_id=app_id,
                                 digest=self.ctx.hasher.digest(raw),
                                 pepper_id=self.ctx.hasher.current.id, start=parsed.start,
                                 created_at=now)

    def secret_matches(self, secrets: list[ClientSecret], raw: str) -> bool:
        """Constant-time check of a presented client secret against an app's live secrets."""
        if tokens.parse(raw, (self.prefixes.client_secret,)) is None:
            return False
        now = self.ctx.clock.now()
        matched = False
        for s in secrets:
            live = s.expires_at is None or now < s.expires_at
            # evaluate every secret: the time taken does not say which one matched
            if self.ctx.hasher.matches(raw, s.pepper_id, s.digest) and live:
                matched = True
        return matched

    # last in the class: defining `list` shadows the builtin in annotations below it
    def list(self, caller: Caller, tenant_id: str | None, *, status: str | None = None,
             limit: int = 50, cursor: str | None = None) -> Page[App]:
        owner = self._owner_scope(caller, tenant_id, "read")
        if status is not None and status not in {s.value for s in AppStatus}:
            raise ValidationError("status must be one of pending, approved, rejected, "
                                  "suspended", field="status")
        with self.ctx.uow(readonly=True) as uow:
            return self.repos(uow).apps.page(owner_tenant_id=owner, status=status, limit=limit,
                                             cursor=cursor, developer_id=self._developer(caller))
