"""The members page: everyone who signs in to the tenant, with their role and state. Admins
change a role, disable or enable a member, and remove one after a confirmation that lists the
keys and connected apps the removal stops. The services keep the rules (the last admin stays);
this page says them in plain words."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.apps import ConnectionView
from keyplane.core.errors import Conflict, NotFound, PermissionDenied, ValidationError
from keyplane.core.model import ApiKey, Principal, PrincipalKind
from keyplane.services.principals import LAST_ADMIN
from keyplane.web.console import present
from keyplane.web.console.base import Console, action, page
from keyplane.web.console.forms import KeyForm

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
ROLES = (("admin", "Admin", "Manages keys, members, connected apps and settings."),
         ("member", "Member", "Uses the data areas and sees keys and settings, read-only."),
         ("read_only", "Read only", "Views data and settings; changes nothing."))
NOTICES = {
    "role": "Saved. The new role applies at once, to the member and to their keys.",
    "disabled": "Disabled. They cannot sign in, and their keys and connected apps are refused.",
    "enabled": "Enabled. They can sign in again, and their keys work again.",
    "removed": "Removed. Their keys are revoked and the apps they connected are refused.",
    "added": "Added. They can sign in with the email and password you chose.",
    "withdrawn": "Withdrawn. The invitation link no longer works.",
}
VERBS = {"demote": "change the role of", "disable": "disable", "delete": "remove"}


def role_title(role: str) -> str:
    return {value: label for value, label, _ in ROLES}.get(role, role)


def _member(c: Console, member_id: str) -> Principal:
    found = c.kp.principals.get(c.caller, c.tenant_id, member_id)
    if found.kind is not PrincipalKind.MEMBER:
        raise NotFound("no such member")  # an API user has its own page
    return found


def _require_write(c: Console, what: str) -> None:
    if not c.can("members:write"):
        raise PermissionDenied(f"your role lets you view members, not {what}")


def last_admin_words(c: Console, member: Principal, exc: Conflict) -> str:
    verb = next((VERBS[a] for a in VERBS if f"cannot {a} " in exc.message), "change")
    return (f"You cannot {verb} {member.name}: they are the only admin of "
            f"{c.signed_in.tenant.name}, and nobody could manage it any more. Make another "
            "member an admin first.")


@router.get("/members")
async def list_members(request: Request) -> Response:
    def view(c: Console) -> Response:
        cursor = c.cursor
        result = c.kp.principals.list(c.caller, c.tenant_id, kind=PrincipalKind.MEMBER,
                                      limit=PAGE_SIZE, cursor=cursor)
        return c.render("console/members.html", {
            "members": result.items, "paged": cursor is not None,
            "next_url": f"/members?cursor={result.next_cursor}" if result.next_cursor else None,
            "can_write": c.can("members:write"), "role_title": role_title,
            "invitations": c.kp.links.invitations(c.caller, c.tenant_id),
            "times": present.Times(c.kp.ctx.clock.now()), "nav": "members",
            "notice": NOTICES.get(c.request.query_params.get("done", ""), ""),
        }, title="Members")

    return await page(request, view)


# -- add with a password ----------------------------------------------------------------------

FIELDS = {"name": "Name", "email": "Email", "role": "Role", "password": "Password"}


def _new_page(c: Console, shown: KeyForm | None = None, status: int = 200) -> Response:
    _require_write(c, "add members")
    return c.render("console/member_new.html", {
        "form": shown or KeyForm({"name": "", "email": "", "role": "member"}),
        "roles": ROLES, "nav": "members",
    }, status=status, title="Add member")


@router.get("/members/new", name="console_new_member")
async def new_member(request: Request) -> Response:
    return await page(request, _new_page)


@router.post("/members")
async def add_member(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        values = {name: form.get(name) if isinstance(form.get(name), str) else ""
                  for name in FIELDS}
        shown = KeyForm({k: v for k, v in values.items() if k != "password"})
        _require_write(c, "add members")
        body = {k: str(v).strip() if k != "password" else v for k, v in values.items()}
        if not body["name"]:
            body.pop("name")  # the service names them by their email
        try:
            c.kp.principals.create(c.caller, c.tenant_id, PrincipalKind.MEMBER, body)
        except (ValidationError, Conflict) as exc:
            if exc.field not in FIELDS:
                raise
            message = exc.message
            if message.startswith(f"{exc.field} "):
                message = FIELDS[exc.field] + message[len(exc.field):]
            shown.errors[exc.field] = message[:1].upper() + message[1:].rstrip(".") + "."
            return _new_page(c, shown, 409 if isinstance(exc, Conflict) else 422)
        return RedirectResponse("/members?done=added", status_code=303)

    return await action(request, view)


# -- one member -------------------------------------------------------------------------------

def _detail(c: Console, member: Principal, *, errors: dict[str, str] | None = None,
            status: int = 200) -> Response:
    keys = c.kp.keys.list(c.caller, c.tenant_id, owner_id=member.id, limit=1)
    return c.render("console/member.html", {
        "person": member, "roles": ROLES, "role_title": role_title,
        "can_write": c.can("members:write"), "is_me": member.id == c.caller.principal_id,
        "errors": errors or {}, "has_keys": bool(keys.items), "nav": "members",
        "groups": sorted((g for g in c.kp.groups.list(c.caller, c.tenant_id)
                          if g.id in member.group_ids), key=lambda g: g.name.lower()),
        "times": present.Times(c.kp.ctx.clock.now()),
        "notice": NOTICES.get(c.request.query_params.get("done", ""), ""),
    }, status=status, title=member.name)


@router.get("/members/{member_id}")
async def show_member(request: Request, member_id: str) -> Response:
    return await page(request, lambda c: _detail(c, _member(c, member_id)))


def _change(c: Console, member_id: str, body: dict[str, Any], done: str,
            field: str) -> Response:
    member = _member(c, member_id)
    _require_write(c, "change them")
    try:
        c.kp.principals.update(c.caller, c.tenant_id, member.id, body)
    except Conflict as exc:
        if exc.code != LAST_ADMIN:
            raise
        return _detail(c, member, errors={field: last_admin_words(c, member, exc)}, status=409)
    except ValidationError as exc:
        if exc.field != "role":
            raise
        return _detail(c, member, errors={"role": "Choose one of the roles listed."},
                       status=422)
    return RedirectResponse(f"/members/{member.id}?done={done}", status_code=303)


@router.post("/members/{member_id}/role")
async def change_role(request: Request, member_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        role = form.get("role")
        return _change(c, member_id, {"role": role if isinstance(role, str) else ""}, "role",
                       "role")

    return await action(request, view)


@router.post("/members/{member_id}/disable")
async def disable(request: Request, member_id: str) -> Response:
    return await action(request, lambda c, form: _change(
        c, member_id, {"enabled": False}, "disabled", "state"))


@router.post("/members/{member_id}/enable")
async def enable(request: Request, member_id: str) -> Response:
    return await action(request, lambda c, form: _change(
        c, member_id, {"enabled": True}, "enabled", "state"))


# -- remove -----------------------------------------------------------------------------------

def _affected(c: Console, member: Principal,
              ) -> tuple[list[ApiKey], list[ConnectionView], bool]:
    """(live keys the member owns, active connections they authorised, more than shown)"""
    keys = c.kp.keys.list(c.caller, c.tenant_id, owner_id=member.id, limit=200)
    now = c.kp.ctx.clock.now()
    live = [k for k in keys.items if k.revoked_at is None and (
        k.expires_at is None or k.expires_at > now)]
    apps: list[ConnectionView] = []
    cursor = None
    for _ in range(20):
        batch = c.kp.connections.list(c.caller, c.tenant_id, limit=200,
                                                 cursor=cursor)
        apps.extend(v for v in batch.items if v.connection.principal_id == member.id)
        cursor = batch.next_cursor
        if cursor is None:
            break
    return live, apps, keys.next_cursor is not None


@router.get("/members/{member_id}/remove")
async def confirm_remove(request: Request, member_id: str) -> Response:
    def view(c: Console) -> Response:
        member = _member(c, member_id)
        _require_write(c, "remove them")
        keys, apps, more = _affected(c, member)
        return c.render("console/member_remove.html", {
            "person": member, "keys": keys, "apps": apps, "more_keys": more,
            "is_me": member.id == c.caller.principal_id, "nav": "members",
        }, title=f"Remove {member.name}")

    return await page(request, view)


@router.post("/members/{member_id}/remove")
async def remove(request: Request, member_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        member = _member(c, member_id)
        _require_write(c, "remove them")
        try:
            c.kp.principals.delete(c.caller, c.tenant_id, member.id)
        except Conflict as exc:
            if exc.code != LAST_ADMIN:
                raise
            return _detail(c, member, errors={"remove": last_admin_words(c, member, exc)},
                           status=409)
        return RedirectResponse("/members?done=removed", status_code=303)

    return await action(request, view)
