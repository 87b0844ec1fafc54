"""The connected apps page: every active connection of the tenant (the app, who authorised it,
its scopes, when it was made and last used), and Revoke behind a confirmation that names what
stops working. Revoking goes through the connection service at once."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.apps import ConnectionView
from keyplane.core.errors import PermissionDenied
from keyplane.web.console import present
from keyplane.web.console.base import Console, action, page

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 25
NOTICES = {"revoked": "Revoked. Its tokens are refused from now on."}


def _authorised_by(view: ConnectionView) -> str:
    who = view.authorised_by
    name, email = who.get("name"), who.get("email")
    if not name:
        return "A member who has since been removed"
    return name if not email or email == name else f"{name} ({email})"


def _revoke_refused(c: Console) -> None:
    if not c.can("keys:write"):
        raise PermissionDenied("your role lets you view connected apps, not revoke them")


@router.get("/connections")
async def list_connections(request: Request) -> Response:
    def view(c: Console) -> Response:
        cursor = c.cursor
        result = c.kp.connections.list(c.caller, c.tenant_id, limit=PAGE_SIZE,
                                                  cursor=cursor)
        now = c.kp.ctx.clock.now()
        rows = [{"view": v, "by": _authorised_by(v), "scopes": present.shown_scopes(
            v.connection.scopes)} for v in result.items]
        next_url = ("/connections?" + urlencode({"cursor": result.next_cursor})
                    if result.next_cursor else None)
        return c.render("console/connections.html", {
            "rows": rows, "paged": cursor is not None, "next_url": next_url,
            "can_write": c.can("keys:write"), "times": present.Times(now),
            "notice": NOTICES.get(c.request.query_params.get("done", ""), ""),
            "nav": "connections",
        }, title="Connected apps")

    return await page(request, view)


@router.get("/connections/{connection_id}/revoke")
async def confirm_revoke(request: Request, connection_id: str) -> Response:
    def view(c: Console) -> Response:
        found = c.kp.connections.get(c.caller, c.tenant_id, connection_id)
        if found.connection.revoked_at is not None:
            return RedirectResponse("/connections?done=revoked", status_code=303)
        _revoke_refused(c)
        now = c.kp.ctx.clock.now()
        return c.render("console/connection_revoke.html", {
            "view": found, "by": _authorised_by(found),
            "scopes": present.shown_scopes(found.connection.scopes),
            "times": present.Times(now), "nav": "connections",
        }, title=f"Revoke {found.app.name}")

    return await page(request, view)


@router.post("/connections/{connection_id}/revoke")
async def revoke(request: Request, connection_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        c.kp.connections.revoke(c.caller, c.tenant_id, connection_id)
        return RedirectResponse("/connections?done=revoked", status_code=303)

    return await action(request, view)
