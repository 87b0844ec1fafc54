"""The API users page (service accounts): principals that never sign in and exist to own keys.
Admins create one (with a role and its data-access groups), which leads straight on to creating
its first key; they change its groups, and disable or enable it. Its keys are the key list
filtered by owner."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import NotFound, PermissionDenied, ValidationError
from keyplane.core.model import Group, Principal, PrincipalKind
from keyplane.web.console import present
from keyplane.web.console.base import Console, action, page
from keyplane.web.console.forms import KeyForm
from keyplane.web.console.members import ROLES, role_title

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
NOTICES = {
    "groups": "Saved. Its keys reach only what its groups allow, from the next request.",
    "role": "Saved. The new role applies at once, to the API user and to its keys.",
    "disabled": "Disabled. Its keys are refused until it is enabled again.",
    "enabled": "Enabled. Its keys work again.",
}


def _api_user(c: Console, user_id: str) -> Principal:
    found = c.kp.principals.get(c.caller, c.tenant_id, user_id)
    if found.kind is not PrincipalKind.SERVICE_ACCOUNT:
        raise NotFound("no such API user")  # a member has their own page
    return found


def _require_write(c: Console, what: str) -> None:
    if not c.can("members:write"):
        raise PermissionDenied(f"your role lets you view API users, not {what}")


def _groups(c: Console) -> list[Group]:
    return sorted(c.kp.groups.list(c.caller, c.tenant_id), key=lambda g: g.name.lower())


def _picked(form: FormData) -> list[str]:
    return sorted({g for g in form.getlist("group_ids") if isinstance(g, str)})


@router.get("/api-users")
async def list_api_users(request: Request) -> Response:
    def view(c: Console) -> Response:
        cursor = c.cursor
        result = c.kp.principals.list(c.caller, c.tenant_id, kind=PrincipalKind.SERVICE_ACCOUNT,
                                      limit=PAGE_SIZE, cursor=cursor)
        names = {g.id: g.name for g in _groups(c)}
        return c.render("console/api_users.html", {
            "users": result.items, "group_names": names, "paged": cursor is not None,
            "next_url": ("/api-users?" + urlencode({"cursor": result.next_cursor})
                         if result.next_cursor else None),
            "can_write": c.can("members:write"), "role_title": role_title,
            "times": present.Times(c.kp.ctx.clock.now()), "nav": "api-users",
        }, title="API users")

    return await page(request, view)


# -- create -------------------------------------------------------------------------------------

def _new_page(c: Console, shown: KeyForm | None = None, status: int = 200) -> Response:
    _require_write(c, "create them")
    return c.render("console/api_user_new.html", {
        "form": shown or KeyForm({"name": "", "role": "member", "group_ids": []}),
        "roles": ROLES, "groups": _groups(c), "nav": "api-users",
    }, status=status, title="Create API user")


@router.get("/api-users/new")
async def new_api_user(request: Request) -> Response:
    return await page(request, _new_page)


@router.post("/api-users")
async def create_api_user(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        _require_write(c, "create them")
        name, role = form.get("name"), form.get("role")
        body: dict[str, Any] = {"name": name.strip() if isinstance(name, str) else "",
                                "role": role if isinstance(role, str) else "",
                                "group_ids": _picked(form)}
        shown = KeyForm(dict(body))
        try:
            made = c.kp.principals.create(c.caller, c.tenant_id, PrincipalKind.SERVICE_ACCOUNT,
                                          body)
        except (ValidationError, NotFound) as exc:
            words = {"name": "Name must not be empty." if not body["name"] else
                     "Name must be at most 200 characters.",
                     "role": "Choose one of the roles listed.",
                     "group_ids": "Choose among the groups listed; one of them no longer "
                                  "exists."}.get(exc.field or "")
            if words is None:
                raise
            shown.errors[exc.field or ""] = words
            return _new_page(c, shown, 422)
        # straight on to its first key, with it as the owner
        return RedirectResponse("/keys/new?" + urlencode({"owner": made.id, "made": "1"}),
                                status_code=303)

    return await action(request, view)


# -- one API user -------------------------------------------------------------------------------

def _detail(c: Console, user: Principal, *, errors: dict[str, str] | None = None,
            status: int = 200) -> Response:
    keys = c.kp.keys.list(c.caller, c.tenant_id, owner_id=user.id, limit=PAGE_SIZE)
    now = c.kp.ctx.clock.now()
    return c.render("console/api_user.html", {
        "user": user, "groups": _groups(c), "roles": ROLES, "role_title": role_title,
        "keys": [present.key_row(k, now, {user.id: user.name}) for k in keys.items],
        "more_keys": keys.next_cursor is not None, "can_write": c.can("members:write"),
        "can_create_key": c.can("keys:write"), "errors": errors or {},
        "times": present.Times(now), "nav": "api-users",
        "notice": NOTICES.get(c.request.query_params.get("done", ""), ""),
    }, status=status, title=user.name)


@router.get("/api-users/{user_id}")
async def show_api_user(request: Request, user_id: str) -> Response:
    return await page(request, lambda c: _detail(c, _api_user(c, user_id)))


def _change(c: Console, user_id: str, body: dict[str, Any], done: str) -> Response:
    user = _api_user(c, user_id)
    _require_write(c, "change them")
    try:
        c.kp.principals.update(c.caller, c.tenant_id, user.id, body)
    except (ValidationError, NotFound) as exc:
        field = exc.field or ""
        words = {"role": "Choose one of the roles listed.",
                 "group_ids": "Choose among the groups listed; one of them no longer exists."}
        if field not in words:
            raise
        return _detail(c, user, errors={field: words[field]}, status=422)
    return RedirectResponse(f"/api-users/{user.id}?done={done}", status_code=303)


@router.post("/api-users/{user_id}/groups")
async def change_groups(request: Request, user_id: str) -> Response:
    return await action(request, lambda c, form: _change(
        c, user_id, {"group_ids": _picked(form)}, "groups"))


@router.post("/api-users/{user_id}/role")
async def change_role(request: Request, user_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        role = form.get("role")
        return _change(c, user_id, {"role": role if isinstance(role, str) else ""}, "role")

    return await action(request, view)


@router.post("/api-users/{user_id}/disable")
async def disable(request: Request, user_id: str) -> Response:
    return await action(request, lambda c, form: _change(c, user_id, {"enabled": False},
                                                         "disabled"))


@router.post("/api-users/{user_id}/enable")
async def enable(request: Request, user_id: str) -> Response:
    return await action(request, lambda c, form: _change(c, user_id, {"enabled": True},
                                                         "enabled"))
