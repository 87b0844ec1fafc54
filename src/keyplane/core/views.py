"""How records look to the outside (API answers, the CLI's ``--json`` and webhook payloads),
without secrets unless just issued.

One rendering per record, so that an event's ``object`` is exactly what ``GET`` shows and
``keyplane ... --json`` prints what the API answers. The web routes and the CLI both import
these (``*_out``); services use the ``*_view`` ones for event payloads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keyplane.core.apps import App, ConnectionView
from keyplane.core.model import ApiKey, AuditEvent, Group, Principal, Share, Tenant
from keyplane.core.webhooks import Delivery, Webhook


def ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id, "object": "key", "tenant_id": key.tenant_id, "owner_id": key.owner_id,
        "name": key.name, "description": key.description, "prefix": key.prefix,
        "start": key.start, "scopes": list(key.scopes), "created_by": key.created_by,
        "created_at": ts(key.created_at), "updated_at": ts(key.updated_at),
        "last_used_at": ts(key.last_used_at), "expires_at": ts(key.expires_at),
        "allowed_ips": list(key.allowed_ips), "require_tls": key.require_tls,
        "enabled": key.enabled,
        "ratelimit": (
            {"limit": key.ratelimit.limit, "window_seconds": key.ratelimit.window_seconds}
            if key.ratelimit else None
        ),
        "meta": key.meta,
        "remaining": key.remaining,
        "previous_secret_expires_at": ts(key.previous_expires_at),
        "revoked_at": ts(key.revoked_at),  # shown only for a key revoked because it leaked
        "leaked": (
            {"at": ts(key.leak.at), "url": key.leak.url, "source": key.leak.source}
            if key.leak else None
        ),
    }


def webhook_view(w: Webhook) -> dict[str, Any]:
    """A webhook endpoint as the API shows it: never its signing secret."""
    return {
        "id": w.id, "object": "webhook", "tenant_id": w.tenant_id, "url": w.url,
        "description": w.description, "events": list(w.events), "enabled": w.enabled,
        "disabled_reason": w.disabled_reason, "disabled_at": ts(w.disabled_at),
        "failing_since": ts(w.failing_since), "consecutive_failures": w.consecutive_failures,
        "previous_secret_expires_at": ts(w.previous_secret_expires_at),
        "created_by": w.created_by, "created_at": ts(w.created_at),
        "updated_at": ts(w.updated_at),
    }


def delivery_view(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id, "object": "webhook_delivery", "webhook_id": d.webhook_id,
        "event_id": d.event_id, "event_type": d.event_type, "status": d.status.value,
        "attempts": d.attempts, "response_status": d.response_status,
        "latency_ms": d.latency_ms, "last_error": d.last_error,
        "created_at": ts(d.created_at), "last_attempt_at": ts(d.last_attempt_at),
        "next_attempt_at": ts(d.next_attempt_at) if d.status.value == "pending" else None,
        "delivered_at": ts(d.delivered_at),
    }


def principal_view(p: Principal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id, "object": p.kind.value, "tenant_id": p.tenant_id, "name": p.name,
        "role": p.role.value, "enabled": p.enabled, "group_ids": p.group_ids,
        "created_at": ts(p.created_at),
    }
    if p.email is not None:
        out["email"] = p.email
        out["has_password"] = p.password_hash is not None
    return out


# -- answers of the API and the CLI ---------------------------------------------------------

# the create, rotate and duplicate answers say it, as the CLI does
SECRET_NOTE = "Copy this key now: it will not be shown again (Keyplane keeps only a digest)."
CLIENT_SECRET_NOTE = "Copy the client secret now; it is shown only once."


def key_out(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    """A key; with ``secret`` (just issued: create, rotate, duplicate) its secret, once."""
    out = key_view(key)
    if secret is not None:
        out["key"] = secret
        out["note"] = SECRET_NOTE
    return out


def tenant_out(t: Tenant) -> dict[str, Any]:
    p = t.policy
    return {
        "id": t.id, "object": "tenant", "name": t.name, "enabled": t.enabled,
        "created_at": ts(t.created_at),
        "policy": {
            "default_expiry_days": p.default_expiry_days, "max_expiry_days": p.max_expiry_days,
            "allow_non_expiring": p.allow_non_expiring, "allowed_ips": p.allowed_ips,
            "require_tls_default": p.require_tls_default,
            "leaked_key_action": p.leaked_key_action.value,
            "revoke_unused_after_days": p.revoke_unused_after_days,
            "api_users_need_group": p.api_users_need_group,
            "audit_retention_days": p.audit_retention_days,
            "require_admin_two_factor": p.require_admin_two_factor,
        },
    }


def principal_out(p: Principal) -> dict[str, Any]:
    return principal_view(p)


def group_out(g: Group) -> dict[str, Any]:
    return {"id": g.id, "object": "group", "tenant_id": g.tenant_id, "name": g.name,
            "description": g.description, "scopes": g.scopes, "created_at": ts(g.created_at)}


def share_out(s: Share, now: datetime) -> dict[str, Any]:
    """A share link's metadata (never its ciphertext)."""
    return {"id": s.id, "object": "share", "tenant_id": s.tenant_id, "note": s.note,
            "created_by": s.created_by, "created_at": ts(s.created_at),
            "expires_at": ts(s.expires_at), "opened_at": ts(s.opened_at),
            "withdrawn": s.withdrawn_at is not None, "withdrawn_at": ts(s.withdrawn_at),
            "state": s.state(now)}


def audit_out(a: AuditEvent) -> dict[str, Any]:
    return {"id": a.id, "object": "audit_event", "at": ts(a.at), "tenant_id": a.tenant_id,
            "actor": a.actor, "credential": a.credential, "action": a.action,
            "target": a.target, "outcome": a.outcome, "ip": a.ip, "user_agent": a.user_agent,
            "request_id": a.request_id, "details": a.details, "changes": a.changes,
            "seq": a.seq, "prev_hash": a.prev_hash, "hash": a.hash}


def app_out(app: App, secret: str | None = None) -> dict[str, Any]:
    """A partner app; with ``secret`` (just issued) its client secret, once."""
    out: dict[str, Any] = {
        "id": app.id, "object": "app", "name": app.name, "description": app.description,
        "homepage": app.homepage, "redirect_uris": list(app.redirect_uris),
        "scopes": list(app.scopes), "status": app.status.value,
        "status_reason": app.status_reason, "owner_tenant_id": app.owner_tenant_id,
        "client_id": app.client_id, "created_by": app.created_by,
        "created_at": ts(app.created_at), "updated_at": ts(app.updated_at),
        "approved_at": ts(app.approved_at),
    }
    if secret is not None:
        out["client_secret"] = secret
        out["client_secret_note"] = CLIENT_SECRET_NOTE
    return out


def connection_out(view: ConnectionView) -> dict[str, Any]:
    c, app = view.connection, view.app
    return {
        "id": c.id, "object": "connection", "tenant_id": c.tenant_id,
        "app": {"id": app.id, "name": app.name, "homepage": app.homepage,
                "client_id": app.client_id, "status": app.status.value},
        "authorized_by": view.authorised_by, "authorized_at": ts(c.created_at),
        "scopes": list(c.scopes), "last_used_at": ts(c.last_used_at),
        "requests": {"allowed": c.request_count, "denied": c.denied_count},
        "expires_at": ts(c.expires_at), "revoked_at": ts(c.revoked_at),
    }
