"""The data access groups page: a group names the data areas (scopes) its members and API users
reach. Admins create one, rename it, pick its scopes in the same View / Edit grid as the key
form, add and remove members and API users (after saying what that changes), and delete it
after a confirmation. Everyone else reads. The group service keeps the rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import Conflict, NotFound, PermissionDenied, ValidationError
from keyplane.core.model import Group, Principal, PrincipalKind
from keyplane.web.console import present
from keyplane.web.console.base import Console, action, page, sentence
from keyplane.web.console.forms import KeyForm
from keyplane.web.console.keys import principals_of

router = APIRouter(include_in_schema=False)
FIELDS = {"name": "Name", "description": "Description", "scopes": "Data areas"}
NOTICES = {
    "created": "Created. Add the members and API users it is for.",
    "saved": "Saved. Its members and their keys reach the new data areas from the next "
             "request.",
    "added": "Added. They reach only what their groups allow, from the next request.",
    "removed": "Removed from the group.",
    "deleted": "Deleted.",
}


def _url(group_id: str, done: str | None = None) -> str:
    return f"/groups/{quote(group_id, safe='')}" + (f"?done={done}" if done else "")


def _require_write(c: Console, what: str) -> None:
    if not c.can("members:write"):
        raise PermissionDenied(f"your role lets you view groups, not {what}")


def _notice(c: Console) -> str:
    return NOTICES.get(c.request.query_params.get("done", ""), "")


def who(p: Principal) -> str:
    return present.owner_label(p)


def _body(form: FormData) -> tuple[dict[str, Any], KeyForm]:
    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    scopes = present.minimal_scopes(s for s in form.getlist("scopes") if isinstance(s, str))
    body = {"name": text("name"), "description": text("description"), "scopes": scopes}
    return body, KeyForm(dict(body))


def _explain(exc: ValidationError | Conflict, shown: KeyForm) -> bool:
    """Puts a refusal beside its field in plain words; False if no field concerns it."""
    name = exc.field or ""
    if name not in FIELDS:
        return False
    message = exc.message
    if isinstance(exc, Conflict):
        message = "Another group already has this name. Choose another."
    elif name == "name" and not shown.values["name"]:
        message = "Name must not be empty."
    elif message.startswith(f"{name} "):
        message = FIELDS[name] + message[len(name):]
    elif message.startswith(f"{name}: "):
        message = message[len(name) + 2:]
    shown.errors[name] = sentence(message)
    return True


@router.get("/groups")
async def list_groups(request: Request) -> Response:
    def view(c: Console) -> Response:
        groups = sorted(c.kp.groups.list(c.caller, c.tenant_id), key=lambda g: g.name.lower())
        counts = c.kp.groups.member_counts(c.caller, c.tenant_id)
        return c.render("console/groups.html", {
            "groups": groups, "counts": counts, "scopes_of": present.shown_scopes,
            "can_write": c.can("members:write"), "notice": _notice(c), "nav": "groups",
        }, title="Data access groups")

    return await page(request, view)


# -- create ---------------------------------------------------------------------------------

def _new_page(c: Console, shown: KeyForm | None = None, status: int = 200) -> Response:
    _require_write(c, "create them")
    shown = shown or KeyForm({"name": "", "description": "", "scopes": []})
    return c.render("console/group_new.html", {
        "form": shown, "grids": present.data_grid(c.kp.ctx.catalogue(), shown.values["scopes"]),
        "nav": "groups",
    }, status=status, title="Create group")


@router.get("/groups/new")
async def new_group(request: Request) -> Response:
    return await page(request, _new_page)


@router.post("/groups")
async def create_group(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        _require_write(c, "create them")
        body, shown = _body(form)
        try:
            made = c.kp.groups.create(c.caller, c.tenant_id, body)
        except (ValidationError, Conflict) as exc:
            if not _explain(exc, shown):
                raise
            return _new_page(c, shown, 409 if isinstance(exc, Conflict) else 422)
        return RedirectResponse(_url(made.id, "created"), status_code=303)

    return await action(request, view)


# -- one group --------------------------------------------------------------------------------

def _detail(c: Console, group: Group, *, shown: KeyForm | None = None,
            errors: dict[str, str] | None = None, status: int = 200) -> Response:
    inside = c.kp.groups.members(c.caller, c.tenant_id, group.id)
    ids = {p.id for p in inside}
    can_write = c.can("members:write")
    others = [p for p in principals_of(c) if p.id not in ids] if can_write else []
    others.sort(key=lambda p: (p.kind is PrincipalKind.SERVICE_ACCOUNT, p.name.lower()))
    shown = shown or KeyForm({"name": group.name, "description": group.description,
                              "scopes": group.scopes})
    return c.render("console/group.html", {
        "group": group, "form": shown, "errors": errors or {},
        "grids": present.data_grid(c.kp.ctx.catalogue(), shown.values["scopes"]),
        "people": [p for p in inside if p.kind is PrincipalKind.MEMBER],
        "robots": [p for p in inside if p.kind is PrincipalKind.SERVICE_ACCOUNT],
        "others": [(p.id, who(p)) for p in others], "who": who, "can_write": can_write,
        "notice": _notice(c), "nav": "groups",
    }, status=status, title=group.name)


@router.get("/groups/{group_id}")
async def show_group(request: Request, group_id: str) -> Response:
    return await page(request, lambda c: _detail(
        c, c.kp.groups.get(c.caller, c.tenant_id, group_id)))


@router.post("/groups/{group_id}")
async def edit_group(request: Request, group_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        group = c.kp.groups.get(c.caller, c.tenant_id, group_id)
        _require_write(c, "change them")
        body, shown = _body(form)
        if body["name"] == group.name:
            body.pop("name")  # unchanged: the unique-name check has nothing to say
        try:
            c.kp.groups.update(c.caller, c.tenant_id, group.id, body)
        except (ValidationError, Conflict) as exc:
            if not _explain(exc, shown):
                raise
            return _detail(c, group, shown=shown,
                           status=409 if isinstance(exc, Conflict) else 422)
        return RedirectResponse(_url(group.id, "saved"), status_code=303)

    return await action(request, view)


@router.post("/groups/{group_id}/members")
async def add_to_group(request: Request, group_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        group = c.kp.groups.get(c.caller, c.tenant_id, group_id)
        _require_write(c, "change them")
        chosen = form.get("principal_id")
        try:
            c.kp.groups.add_member(c.caller, c.tenant_id, group.id,
                                   chosen if isinstance(chosen, str) else "")
        except (ValidationError, NotFound) as exc:
            if exc.field != "principal_id":
                raise
            words = ("Choose a member or API user from the list; that one no longer exists."
                     if isinstance(exc, NotFound) else sentence(exc.message))
            return _detail(c, group, errors={"principal_id": words}, status=422)
        return RedirectResponse(_url(group.id, "added"), status_code=303)

    return await action(request, view)


def _in_group(c: Console, group: Group, principal_id: str) -> Principal:
    found = c.kp.principals.get(c.caller, c.tenant_id, principal_id)
    if group.id not in found.group_ids:
        raise NotFound("they are not in this group")
    return found


@router.get("/groups/{group_id}/members/{principal_id}/remove")
async def confirm_remove(request: Request, group_id: str, principal_id: str) -> Response:
    def view(c: Console) -> Response:
        group = c.kp.groups.get(c.caller, c.tenant_id, group_id)
        _require_write(c, "change them")
        person = _in_group(c, group, principal_id)
        return c.render("console/group_remove.html", {
            "group": group, "person": person, "name": who(person),
            "last": person.group_ids == [group.id], "nav": "groups",
            "effect": c.kp.groups.leaving_effect(c.caller, c.tenant_id, person),
        }, title=f"Remove {person.name} from {group.name}")

    return await page(request, view)


@router.post("/groups/{group_id}/members/{principal_id}/remove")
async def remove_from_group(request: Request, group_id: str, principal_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        group = c.kp.groups.get(c.caller, c.tenant_id, group_id)
        _require_write(c, "change them")
        c.kp.groups.remove_member(c.caller, c.tenant_id, group.id, principal_id)
        return RedirectResponse(_url(group.id, "removed"), status_code=303)

    return await action(request, view)


# -- delete -----------------------------------------------------------------------------------

@router.get("/groups/{group_id}/delete")
async def confirm_delete(request: Request, group_id: str) -> Response:
    def view(c: Console) -> Response:
        group = c.kp.groups.get(c.caller, c.tenant_id, group_id)
        _require_write(c, "delete them")
        inside = c.kp.groups.members(c.caller, c.tenant_id, group.id)
        return c.render("console/group_delete.html", {
            "group": group, "inside": [who(p) for p in inside], "nav": "groups",
        }, title=f"Delete {group.name}")

    return await page(request, view)


@router.post("/groups/{group_id}/delete")
async def delete_group(request: Request, group_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        group = c.kp.groups.get(c.caller, c.tenant_id, group_id)
        _require_write(c, "delete them")
        try:
            c.kp.groups.delete(c.caller, c.tenant_id, group.id)
        except Conflict:
            inside = c.kp.groups.members(c.caller, c.tenant_id, group.id)
            return c.render("console/group_delete.html", {
                "group": group, "inside": [who(p) for p in inside], "nav": "groups",
            }, status=409, title=f"Delete {group.name}")
        return RedirectResponse("/groups?done=deleted", status_code=303)

    return await action(request, view)
