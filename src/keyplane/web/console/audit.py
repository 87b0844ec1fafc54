"""The audit log page: every event of the tenant, newest first, with who did it (and with which
credential), the action, its target, the time and the source address; filtered by action and
paged with the audit service's cursor."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.core.errors import KeyplaneError
from keyplane.core.model import ApiKey, AuditEvent
from keyplane.core.webhooks import EVENT_TYPES
from keyplane.services.audit import CURSOR
from keyplane.web.console import present
from keyplane.web.console.base import Console, page
from keyplane.web.console.keys import owner_names

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
_ACTION = re.compile(r"\A[a-z_]{1,40}(\.[a-z_]{1,40})?\Z")
#: Actions written by the services besides the webhook event types (the filter offers both).
OTHER_ACTIONS = frozenset({
    "authz_fail", "key.leaked", "connection.leaked", "connection.created",
    "connection.denied", "session.signed_in", "session.signed_out", "session.signin_failed",
    "group.created", "group.updated", "group.deleted", "tenant.updated", "share.created",
    "share.opened", "share.withdrawn", "webhook.created", "webhook.updated", "webhook.deleted",
    "webhook.secret_rotated", "webhook.redelivered", "app.registered", "app.secret_rotated",
    "automation.created", "automation.updated", "automation.deleted",
})
WORDS = {
    "authz_fail": "Refused: not allowed",
    "session.signin_failed": "Sign-in failed",
    "session.signed_in": "Signed in",
    "session.signed_out": "Signed out",
    "connection.authorized": "App connected",
    "connection.created": "App connected",
    "connection.denied": "App connection declined",
    "connection.revoked": "App connection revoked",
    "connection.leaked": "App token leaked",
    "key.locked": "Key locked",
    "key.unlocked": "Key unlocked",
}


def action_words(action: str) -> str:
    """"key.revoked" reads "Key revoked"."""
    if action in WORDS:
        return WORDS[action]
    text = action.replace(".", " ").replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def action_choices(chosen: str) -> list[tuple[str, str]]:
    known = set(EVENT_TYPES) | OTHER_ACTIONS | ({chosen} if chosen else set())
    return sorted(((a, action_words(a)) for a in known), key=lambda pair: (pair[1], pair[0]))


@dataclass(frozen=True)
class Actor:
    name: str
    credential: str  # "Session", "API key", "Partner app", "Operator" or "Keyplane"
    key_id: str | None = None


def _actors(c: Console, events: list[AuditEvent]) -> dict[str, Actor]:
    actors = {e.actor: e.actor.partition(":") for e in events}
    keys: dict[str, ApiKey | None] = {}
    for kind, _, ref in actors.values():
        if kind == "key" and ref not in keys:
            try:
                keys[ref] = c.kp.keys.get(c.caller, c.tenant_id, ref)
            except KeyplaneError:  # not a key of this tenant: the operator's
                keys[ref] = None
    people = owner_names(c, [ref for kind, _, ref in actors.values() if kind == "principal"]
                         + [k.owner_id for k in keys.values() if k is not None])
    out: dict[str, Actor] = {}
    for actor, (kind, _, ref) in actors.items():
        if kind == "principal":
            out[actor] = Actor(people.get(ref, "A removed member"), "Session")
        elif kind == "key":
            key = keys[ref]
            if key is None:
                out[actor] = Actor("An operator key", "Operator")
            else:
                owner = people.get(key.owner_id or "", "")
                out[actor] = Actor(f"{key.name}" + (f" ({owner})" if owner else ""), "API key",
                                   key.id)
        elif kind == "app":
            out[actor] = Actor(ref, "Partner app")
        elif actor == "system":
            out[actor] = Actor("Keyplane", "Keyplane")
        else:
            out[actor] = Actor(actor, "Operator")
    return out


@router.get("/audit")
async def audit_log(request: Request) -> Response:
    def view(c: Console) -> Response:
        params = c.request.query_params
        chosen = (params.get("action") or "").strip()
        chosen = chosen if _ACTION.match(chosen) else ""
        cursor = c.cursor if c.cursor and CURSOR.match(c.cursor) else None  # else page one
        result = c.kp.audit.list(c.caller, c.tenant_id, action=chosen or None,
                                 limit=PAGE_SIZE, cursor=cursor)
        events: list[AuditEvent] = list(result.items)
        base = {"action": chosen} if chosen else {}
        next_url = ("/audit?" + urlencode({**base, "cursor": result.next_cursor})
                    if result.next_cursor else None)
        return c.render("console/audit.html", {
            "events": events, "actors": _actors(c, events), "words": action_words,
            "choices": action_choices(chosen), "chosen": chosen, "paged": cursor is not None,
            "next_url": next_url, "first_url": "/audit" + (f"?{urlencode(base)}" if base else ""),
            "times": present.Times(c.kp.ctx.clock.now()), "nav": "audit",
        }, title="Audit log")

    return await page(request, view)
