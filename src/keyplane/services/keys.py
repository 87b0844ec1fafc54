"""The API-key lifecycle: create, list, show, edit, lock, rotate, duplicate, revoke."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from keyplane.core import ids, tokens
from keyplane.core import scopes as sc
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ValidationError,
)
from keyplane.core.model import ApiKey, KeySecret, Page, Tenant
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import NO_GROUP, Caller, principal_rights, reaches_no_data
from keyplane.core.views import key_view
from keyplane.services import validate as v
from keyplane.services.context import Context

DEFAULT_GRACE_SECONDS = 7 * 86400
MAX_DAYS = v.MAX_DAYS
_MISSING: Any = object()
CREATE_FIELDS = ("name", "description", "scopes", "owner_id", "expires_in_days", "allowed_ips",
                 "require_tls", "ratelimit", "meta", "remaining")
PATCH_FIELDS = ("name", "description", "scopes", "allowed_ips", "require_tls", "enabled",
                "ratelimit", "meta", "remaining")
MAX_REMAINING = v.MAX_REMAINING


def _remaining(value: Any) -> int | None:
    """A usage quota: how many more verifications the key may pass (null: no quota)."""
    if value is None:
        return None
    return v.integer(value, "remaining", minimum=0, maximum=MAX_REMAINING)


def _listed(scopes: Sequence[str]) -> str:
    return ", ".join(repr(s) for s in scopes)


@dataclass(frozen=True)
class IssuedKey:
    """A key together with its secret: returned once, by create, rotate and duplicate."""

    key: ApiKey
    secret: str


class KeyService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- helpers ---------------------------------------------------------------------------

    def _new_secret(self, key_id: str, now: datetime) -> tuple[str, KeySecret]:
        raw = tokens.generate(self.ctx.key_prefix)
        parsed = tokens.parse(raw)
        assert parsed is not None
        secret = KeySecret(
            id=ids.new_id("sec"), key_id=key_id, digest=self.ctx.hasher.digest(raw),
            pepper_id=self.ctx.hasher.current.id, start=parsed.start, created_at=now,
            expires_at=None,
        )
        return raw, secret

    def _lifetime(self, tenant: Tenant | None, value: Any) -> int | None:
        if tenant is None:  # operator keys: no expiry unless asked for
            if value is _MISSING or value is None:
                return None
            return v.integer(value, "expires_in_days", minimum=1, maximum=MAX_DAYS)
        policy = tenant.policy
        if value is _MISSING:
            return policy.default_expiry_days
        if value is None:
            if not policy.allow_non_expiring:
                raise ValidationError(
                    "expires_in_days: this tenant's policy does not allow keys that never expire",
                    field="expires_in_days",
                )
            return None
        maximum = policy.max_expiry_days or MAX_DAYS
        return v.integer(value, "expires_in_days", minimum=1, maximum=maximum)

    def _check_scopes(self, uow: UnitOfWork, key: ApiKey, caller: Caller) -> None:
        cat = self.ctx.catalogue()
        beyond_caller = caller.lacks(key.scopes)
        if beyond_caller:  # a credential never grants what it does not hold itself
            raise PermissionDenied(
                f"scopes: this credential does not hold {_listed(beyond_caller)}, so it cannot "
                "grant it", code="insufficient_scope", field="scopes")
        if key.is_operator:
            allowed = sc.OPERATOR_KEY_SCOPES
            bad = [s for s in key.scopes if s not in allowed]
            if bad:
                raise ValidationError(f"scopes: operator keys hold only {sorted(allowed)}; "
                                      f"{bad[0]!r} is not one of them", field="scopes")
            return
        platform = [s for s in key.scopes if s.startswith("platform:")]
        if platform:
            raise ValidationError(f"scopes: {platform[0]!r} is for operator keys only",
                                  field="scopes")
        assert key.owner_id is not None and key.tenant_id is not None
        owner = uow.principals.get(key.tenant_id, key.owner_id)
        assert owner is not None
        tenant = uow.tenants.get(key.tenant_id)
        policy = tenant.policy if tenant is not None else None
        rights = principal_rights(owner, uow.groups.get_many(owner.group_ids), cat, policy)
        beyond = sorted(sc.expand(key.scopes) - rights)
        if beyond:
            why = (NO_GROUP if policy is not None and reaches_no_data(owner, policy)
                   else "a key cannot exceed its owner's rights")
            raise ValidationError(
                f"scopes: the owner does not hold {beyond[0]!r}; {why}", field="scopes")

    def _load(self, uow: UnitOfWork, caller: Caller, tenant_id: str | None, key_id: str,
              *, for_update: bool = False, leaked_ok: bool = False) -> ApiKey:
        """The live key; with ``leaked_ok`` also a key revoked because it leaked, so that its
        people can still read why it stopped working (nothing else can be done with it)."""
        key = uow.keys.get(tenant_id, key_id, for_update=for_update)
        if key is None or (key.revoked_at is not None and not (leaked_ok and key.leak)):
            raise NotFound("no such key")
        return key

    @staticmethod
    def _require_control(caller: Caller, key: ApiKey, action: str) -> None:
        """Only a credential holding every scope ``key`` grants may take it over: receive a
        new secret for it, copy it, widen it or turn it back on. Lock and revoke only reduce
        access and need ``keys:write`` alone."""
        beyond = caller.lacks(key.scopes)
        if beyond:
            raise PermissionDenied(
                f"this key grants {_listed(beyond)}, which this credential does not hold, so "
                f"it cannot {action} it; only locking and revoking are allowed",
                code="insufficient_scope")

    @staticmethod
    def _check_version(key: ApiKey, if_match: Sequence[str] | None) -> None:
        """``If-Match``: refuse the change unless the key is still as the caller last read it."""
        if if_match is None or "*" in if_match or key.version in if_match:
            return
        raise PreconditionFailed(
            "If-Match: the key has changed since you read it (another rotation or edit came "
            "first); read it again and decide", field="If-Match")

    def _scope_of(self, caller: Caller, tenant_id: str | None, operator: bool) -> str | None:
        if operator:
            caller.require("platform:write")
            return None
        return caller.tenant_for(tenant_id)

    def _with_grace(self, uow: UnitOfWork, key: ApiKey) -> ApiKey:
        pending = [s.expires_at for s in uow.keys.secrets(key.id) if s.expires_at is not None]
        return replace(key, previous_expires_at=max(pending) if pending else None)

    # -- use cases -------------------------------------------------------------------------

    def default_owner(self, caller: Caller, tenant_id: str) -> str:
        """Who owns a tenant key that an operator tool (``keyplane keys create`` without
        ``--owner``) makes without naming an owner: the tenant's oldest enabled admin (member
        or service account with the admin role). The API instead requires ``owner_id`` from
        operator credentials."""
        tid = caller.tenant_for(tenant_id)
        caller.require("keys:write")
        with self.ctx.uow(readonly=True) as uow:
            if uow.tenants.get(tid) is None:
                raise NotFound("no such tenant", field="tenant")
            oldest = None
            cursor: str | None = None
            while True:
                page = uow.principals.page(tid, kind=None, limit=500, cursor=cursor)
                for p in page.items:
                    if p.role.value == "admin" and p.enabled and (
                            oldest is None or (p.created_at, p.id) < (oldest.created_at,
                                                                      oldest.id)):
                        oldest = p
                cursor = page.next_cursor
                if cursor is None:
                    break
        if oldest is None:
            raise ValidationError("--owner is required: the tenant has no enabled admin to own "
                                  "the key", field="owner_id")
        return str(oldest.id)

    def create(self, caller: Caller, tenant_id: str | None, body: dict[str, Any], *,
               operator: bool = False) -> IssuedKey:
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:write")
        v.only_fields(body, CREATE_FIELDS)
        now = self.ctx.clock.now()
        name = v.text(body.get("name"), "name", max_len=v.MAX_NAME)
        description = v.text(body.get("description"), "description", max_len=v.MAX_DESCRIPTION,
                             required=False)
        scopes = v.scope_list(body.get("scopes", []), self.ctx.catalogue())
        allowed_ips = v.ip_list(body.get("allowed_ips"))
        ratelimit = v.ratelimit(body.get("ratelimit"))
        meta = v.meta(body.get("meta"))
        remaining = _remaining(body.get("remaining"))
        with self.ctx.uow() as uow:
            tenant = None
            owner_id = None
            if tid is not None:
                tenant = uow.tenants.get(tid)
                if tenant is None:
                    raise NotFound("no such tenant")
                owner_id = body.get("owner_id") or caller.principal_id
                if owner_id is None:
                    raise ValidationError("owner_id is required with operator credentials",
                                          field="owner_id")
                if not isinstance(owner_id, str):
                    raise ValidationError("owner_id must be a string", field="owner_id")
                owner = uow.principals.get(tid, owner_id)
                if owner is None:
                    raise NotFound("owner_id: no such member or service account",
                                   field="owner_id")
                if not owner.enabled:
                    raise ValidationError("owner_id: the owner is disabled", field="owner_id")
            elif "owner_id" in body:
                raise ValidationError("operator keys have no owner", field="owner_id")
            require_tls = (
                v.boolean(body["require_tls"], "require_tls") if "require_tls" in body
                else (tenant.policy.require_tls_default if tenant else True)
            )
            lifetime = self._lifetime(tenant, body.get("expires_in_days", _MISSING))
            key_id = ids.new_id("key")
            raw, secret = self._new_secret(key_id, now)
            key = ApiKey(
                id=key_id, tenant_id=tid, owner_id=owner_id, name=name, prefix=self.ctx.key_prefix,
                start=secret.start, scopes=scopes, created_at=now, updated_at=now,
                expires_at=now + timedelta(days=lifetime) if lifetime else None,
                lifetime_days=lifetime, description=description, created_by=caller.actor,
                allowed_ips=allowed_ips, require_tls=require_tls, ratelimit=ratelimit, meta=meta,
                remaining=remaining,
            )
            self._check_scopes(uow, key, caller)
            uow.keys.add(key)
            uow.keys.add_secret(secret)
            self.ctx.audit(uow, caller, "key.created", key.id, tenant_id=tid, name=name,
                           scopes=scopes, owner_id=owner_id, subject=key_view(key))
            uow.commit()
        return IssuedKey(key=key, secret=raw)

    def get(self, caller: Caller, tenant_id: str | None, key_id: str, *,
            operator: bool = False) -> ApiKey:
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:read")
        with self.ctx.uow(readonly=True) as uow:
            return self._with_grace(uow, self._load(uow, caller, tid, key_id, leaked_ok=True))

    def list(self, caller: Caller, tenant_id: str | None, *, owner_id: str | None = None,
             enabled: bool | None = None, q: str | None = None, limit: int = 50,
             cursor: str | None = None, operator: bool = False) -> Page[ApiKey]:
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:read")
        with self.ctx.uow(readonly=True) as uow:
            return uow.keys.page(tid, owner_id=owner_id, enabled=enabled, q=q, limit=limit,
                                 cursor=cursor)

    def update(self, caller: Caller, tenant_id: str | None, key_id: str, body: dict[str, Any],
               *, operator: bool = False, if_match: Sequence[str] | None = None) -> ApiKey:
        """Edit, lock or unlock. Anything but locking needs every scope the key grants."""
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:write")
        v.only_fields(body, PATCH_FIELDS)
        lock_only = body == {"enabled": False}
        with self.ctx.uow() as uow:
            key = self._load(uow, caller, tid, key_id, for_update=True)
            self._check_version(key, if_match)
            before = key_view(self._with_grace(uow, key))
            if not lock_only:
                self._require_control(caller, key, "unlock" if body.get("enabled") else "edit")
            if "name" in body:
                key.name = v.text(body["name"], "name", max_len=v.MAX_NAME)
            if "description" in body:
                key.description = v.text(body["description"], "description",
                                         max_len=v.MAX_DESCRIPTION, required=False)
            if "scopes" in body:
                key.scopes = v.scope_list(body["scopes"], self.ctx.catalogue())
                self._check_scopes(uow, key, caller)
            if "allowed_ips" in body:
                key.allowed_ips = v.ip_list(body["allowed_ips"])
            if "require_tls" in body:
                key.require_tls = v.boolean(body["require_tls"], "require_tls")
            if "enabled" in body:
                key.enabled = v.boolean(body["enabled"], "enabled")
            if "ratelimit" in body:
                key.ratelimit = v.ratelimit(body["ratelimit"])
            if "meta" in body:
                key.meta = v.meta(body["meta"])
            if "remaining" in body:
                key.remaining = _remaining(body["remaining"])
            key.updated_at = self.ctx.clock.now()
            uow.keys.update(key)
            if "remaining" in body:
                uow.keys.set_remaining(key.id, key.remaining)
            action = "key.updated"
            if set(body) == {"enabled"}:
                action = "key.unlocked" if key.enabled else "key.locked"
            key = self._with_grace(uow, key)
            self.ctx.audit(uow, caller, action, key.id, tenant_id=tid, fields=sorted(body),
                           subject=key_view(key), before=before)
            self.ctx.changed(uow, ChangeKind.KEY, key.id)
            uow.commit()
        return key

    def revoke(self, caller: Caller, tenant_id: str | None, key_id: str, *,
               operator: bool = False, reason: str = "requested") -> None:
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:write")
        with self.ctx.uow() as uow:
            key = self._load(uow, caller, tid, key_id, for_update=True)
            self.revoke_loaded(uow, caller, key, reason)
            uow.commit()

    def revoke_loaded(self, uow: UnitOfWork, caller: Caller, key: ApiKey, reason: str,
                      **details: Any) -> None:
        """Revokes a key the caller loaded for update in ``uow`` (audit, ``key.revoked`` event,
        caches told); the caller commits."""
        now = self.ctx.clock.now()
        before = key_view(key)
        key.revoked_at = now
        key.updated_at = now
        key.enabled = False
        uow.keys.update(key)
        self.ctx.audit(uow, caller, "key.revoked", key.id, tenant_id=key.tenant_id,
                       reason=reason, subject=key_view(key), before=before, **details)
        self.ctx.changed(uow, ChangeKind.KEY, key.id)

    def rotate(self, caller: Caller, tenant_id: str | None, key_id: str, body: dict[str, Any],
               *, operator: bool = False, if_match: Sequence[str] | None = None) -> IssuedKey:
        """A new secret for the same key. The old secret works until the grace ends (0: now).

        A key holds at most two secrets: rotating while an earlier grace is still running ends
        that older secret at once. The old secret never outlives the key's own expiry. With
        ``if_match`` (the versions the caller read) a rotation that lost a race is refused
        (412) instead of handing out a secret that the winner's rotation already ended; without
        it, the version the key had when this request read it stands in, and a rotation that
        another change overtook while it waited for the key's lock is refused (409): of
        concurrent rotations exactly one wins.
        """
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:write")
        v.only_fields(body, ("grace_period_seconds",))
        grace = v.integer(body.get("grace_period_seconds", DEFAULT_GRACE_SECONDS),
                          "grace_period_seconds", minimum=0, maximum=v.MAX_GRACE_SECONDS)
        seen = None
        if if_match is None:  # the key as this request found it, before waiting for the lock
            with self.ctx.uow(readonly=True) as uow:
                seen = self._load(uow, caller, tid, key_id).version
        with self.ctx.uow() as uow:
            key = self._load(uow, caller, tid, key_id, for_update=True)
            self._check_version(key, if_match)
            if seen is not None and key.version != seen:
                raise Conflict(
                    "another rotation or edit of this key committed while this rotation "
                    "waited; read the key again and rotate it if you still mean to (send "
                    "If-Match with its ETag)", code="concurrent_change")
            self._require_control(caller, key, "rotate")
            before = key_view(self._with_grace(uow, key))
            now = self.ctx.clock.now()
            deadline = now + timedelta(seconds=grace)
            if key.expires_at is not None:
                deadline = min(deadline, key.expires_at)
            for old in uow.keys.secrets(key.id):
                if old.expires_at is not None or deadline <= now:
                    uow.keys.delete_secret(old.id)  # an earlier grace, or rotate-now
                else:
                    old.expires_at = deadline
                    uow.keys.update_secret(old)
            raw, secret = self._new_secret(key.id, now)
            uow.keys.add_secret(secret)
            key.start = secret.start
            key.updated_at = now
            if key.lifetime_days is not None:
                key.expires_at = now + timedelta(days=key.lifetime_days)
            uow.keys.update(key)
            key = self._with_grace(uow, key)
            self.ctx.audit(uow, caller, "key.rotated", key.id, tenant_id=tid,
                           grace_period_seconds=grace, subject=key_view(key), before=before)
            self.ctx.changed(uow, ChangeKind.KEY, key.id)
            uow.commit()
        return IssuedKey(key=key, secret=raw)

    def duplicate(self, caller: Caller, tenant_id: str | None, key_id: str,
                  body: dict[str, Any], *, operator: bool = False) -> IssuedKey:
        """"Duplicate as new key": the same settings under a new name, with a new secret."""
        tid = self._scope_of(caller, tenant_id, operator)
        caller.require("keys:write")
        v.only_fields(body, ("name",))
        with self.ctx.uow(readonly=True) as uow:
            source = self._load(uow, caller, tid, key_id)
        self._require_control(caller, source, "duplicate")
        new_body: dict[str, Any] = {
            "name": body.get("name", f"{source.name} (copy)"),
            "description": source.description, "scopes": source.scopes,
            "allowed_ips": source.allowed_ips, "require_tls": source.require_tls,
            "meta": source.meta, "remaining": source.remaining,  # the usage quota too
            "expires_in_days": source.lifetime_days,
            "ratelimit": (
                {"limit": source.ratelimit.limit,
                 "window_seconds": source.ratelimit.window_seconds}
                if source.ratelimit else None
            ),
        }
        if source.owner_id is not None:
            new_body["owner_id"] = source.owner_id
        return self.create(caller, tid, new_body, operator=operator)
