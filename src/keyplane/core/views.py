"""How records look to the outside (API answers and webhook payloads), without secrets.

One rendering per record, so that an event's ``object`` is exactly what ``GET`` shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keyplane.core.model import ApiKey, Principal
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
