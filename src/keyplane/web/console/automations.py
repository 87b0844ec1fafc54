"""The automations page (the seed's action sets): the tenant's rules "when ``contact.created``
happens through the API (optionally only through this key, API user or connected app), send it
to these webhooks", shown with the names of what they filter on, and the tenant's webhooks with
why a disabled one stopped. Admins create a rule, turn it on or off, and delete it after a
confirmation; everyone else reads. The automation service keeps the rules; webhooks themselves
are managed with ``/v1/webhooks``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import NotFound, PermissionDenied, ValidationError
from keyplane.core.events import Automation
from keyplane.core.model import Page, Principal, PrincipalKind
from keyplane.core.webhooks import Webhook
from keyplane.web.console import present
from keyplane.web.console.base import Console, action, page, sentence
from keyplane.web.console.forms import KeyForm
from keyplane.web.console.keys import principals_of

router = APIRouter(include_in_schema=False)
BATCH = 100
MAX_SHOWN = 1000  # rules, webhooks, keys or apps read for one page
FIELDS = {"name": "Name", "description": "Description", "event": "Event",
          "key_id": "Key", "principal_id": "API user or member", "app_id": "Connected app",
          "webhook_ids": "Webhooks"}
GONE = {"key_id": "Choose a key from the list; that one no longer exists.",
        "principal_id": "Choose an API user or member from the list; that one no longer "
                        "exists.",
        "app_id": "Choose a connected app from the list; that one is not connected to this "
                  "account.",
        "webhook_ids": "Choose webhooks from the list; one of them no longer exists."}
NOTICES = {
    "created": "Created. It fires for the next matching event the product reports.",
    "enabled": "Turned on. It fires for the next matching event.",
    "disabled": "Turned off. It sends nothing until it is turned on again.",
    "deleted": "Deleted.",
}
VERBS = {"created": "created", "updated": "updated", "deleted": "deleted", "*": "changed"}


def _url(done: str | None = None) -> str:
    return "/automations" + (f"?done={done}" if done else "")


def _require_write(c: Console, what: str) -> None:
    if not c.can("tenant:write"):
        raise PermissionDenied(f"your role lets you view automations, not {what}")


_T = TypeVar("_T")


def _all(fetch: Callable[[str | None], Page[_T]]) -> list[_T]:
    """Every item of a paged service list, up to MAX_SHOWN."""
    out: list[_T] = []
    cursor = None
    while len(out) < MAX_SHOWN:
        batch = fetch(cursor)
        out.extend(batch.items)
        cursor = batch.next_cursor
        if cursor is None:
            break
    return out[:MAX_SHOWN]


def activity(event: str) -> str:
    """``contact.created`` as "Contacts created through the API"."""
    area, _, verb = event.partition(".")
    what = "Any record" if area == "*" else area.replace("_", " ").capitalize()
    if area != "*" and what.endswith("y") and what[-2:-1] not in "aeiou":
        what = what[:-1] + "ies"  # opportunity: opportunities
    elif area != "*" and not what.endswith("s"):
        what += "s"
    return f"{what} {VERBS.get(verb, verb)} through the API"


@dataclass(frozen=True)
class Link:
    label: str
    href: str | None


@dataclass
class Names:
    """The tenant's keys, people and connected apps, by id, for pickers and labels."""

    keys: dict[str, str]
    people: dict[str, Principal]
    apps: dict[str, str]
    webhooks: dict[str, Webhook]

    def key(self, key_id: str) -> Link:
        if key_id in self.keys:
            return Link(self.keys[key_id], f"/keys/{quote(key_id, safe='')}")
        return Link(f"{key_id} (no longer exists)", None)

    def person(self, principal_id: str) -> Link:
        p = self.people.get(principal_id)
        if p is None:
            return Link(f"{principal_id} (no longer exists)", None)
        section = "api-users" if p.kind is PrincipalKind.SERVICE_ACCOUNT else "members"
        return Link(present.owner_label(p), f"/{section}/{quote(p.id, safe='')}")

    def app(self, app_id: str) -> Link:
        if app_id in self.apps:
            return Link(self.apps[app_id], "/connections")
        return Link(f"{app_id} (not connected now)", None)

    def filters(self, a: Automation) -> list[tuple[str, Link]]:
        out = []
        if a.key_id:
            out.append(("Only through the key", self.key(a.key_id)))
        if a.principal_id:
            out.append(("Only through", self.person(a.principal_id)))
        if a.app_id:
            out.append(("Only through the connected app", self.app(a.app_id)))
        return out


def _names(c: Console, rules: list[Automation] | None = None) -> Names:
    """The pickers' choices (the newest MAX_SHOWN keys, the owner list's principals), and the
    keys and people ``rules`` name beyond those, read one by one (a rule's filter is named
    however many keys or members the tenant has)."""
    keys = {k.id: k.name for k in _all(lambda cur: c.kp.keys.list(
        c.caller, c.tenant_id, limit=BATCH, cursor=cur))}
    views = _all(lambda cur: c.kp.connections.list(c.caller, c.tenant_id,
                                                              limit=BATCH, cursor=cur))
    hooks = _all(lambda cur: c.kp.webhooks.list(c.caller, c.tenant_id, limit=BATCH,
                                                cursor=cur))
    people = {p.id: p for p in principals_of(c)}
    for key_id in {a.key_id for a in rules or () if a.key_id and a.key_id not in keys}:
        with contextlib.suppress(NotFound):  # deleted since: named so
            keys[key_id] = c.kp.keys.get(c.caller, c.tenant_id, key_id).name
    people.update(c.kp.principals.named(c.caller, c.tenant_id, {
        a.principal_id for a in rules or () if a.principal_id and a.principal_id not in people}))
    return Names(keys=keys, people=people, apps={v.app.id: v.app.name for v in views},
                 webhooks={w.id: w for w in hooks})


def webhook_state(w: Webhook) -> str:
    """Why a webhook is disabled, in a sentence ("" when it is enabled)."""
    if w.enabled:
        return ""
    if w.disabled_reason:
        return sentence(w.disabled_reason)
    return "Turned off with /v1/webhooks."


@router.get("/automations")
async def list_automations(request: Request) -> Response:
    def view(c: Console) -> Response:
        rules = _all(lambda cur: c.kp.automations.list(c.caller, c.tenant_id, limit=BATCH,
                                                       cursor=cur))
        names = _names(c, rules)
        return c.render("console/automations.html", {
            "rules": sorted(rules, key=lambda a: a.name.lower()), "names": names,
            "webhooks": sorted(names.webhooks.values(), key=lambda w: w.url),
            "activity": activity, "webhook_state": webhook_state,
            "can_write": c.can("tenant:write"), "nav": "automations",
            "notice": NOTICES.get(c.request.query_params.get("done", ""), ""),
        }, title="Automations")

    return await page(request, view)


# -- create ---------------------------------------------------------------------------------

def _blank() -> KeyForm:
    return KeyForm({"name": "", "description": "", "event": "contact.created", "key_id": "",
                    "principal_id": "", "app_id": "", "webhook_ids": [], "enabled": True})


def _new_page(c: Console, shown: KeyForm | None = None, status: int = 200) -> Response:
    _require_write(c, "create them")
    names = _names(c)
    people = sorted(names.people.values(),
                    key=lambda p: (p.kind is not PrincipalKind.SERVICE_ACCOUNT, p.name.lower()))
    return c.render("console/automation_new.html", {
        "form": shown or _blank(), "names": names,
        "keys": sorted(names.keys.items(), key=lambda kv: kv[1].lower()),
        "people": [(p.id, present.owner_label(p)) for p in people],
        "apps": sorted(names.apps.items(), key=lambda kv: kv[1].lower()),
        "webhooks": sorted(names.webhooks.values(), key=lambda w: w.url),
        "webhook_state": webhook_state, "nav": "automations",
    }, status=status, title="Create automation")


def _body(form: FormData) -> tuple[dict[str, Any], KeyForm]:
    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    hooks = [w for w in form.getlist("webhook_ids") if isinstance(w, str) and w]
    shown = KeyForm({"name": text("name"), "description": text("description"),
                     "event": text("event"), "key_id": text("key_id"),
                     "principal_id": text("principal_id"), "app_id": text("app_id"),
                     "webhook_ids": hooks, "enabled": form.get("enabled") == "on"})
    body: dict[str, Any] = {"name": shown.values["name"],
                            "description": shown.values["description"],
                            "event": shown.values["event"], "webhook_ids": hooks,
                            "enabled": shown.values["enabled"]}
    for optional in ("key_id", "principal_id", "app_id"):
        if shown.values[optional]:
            body[optional] = shown.values[optional]
    return body, shown


def _explain(exc: ValidationError | NotFound, shown: KeyForm) -> bool:
    """Puts a refusal beside its field in plain words; False if no field concerns it."""
    name = exc.field or ""
    if name not in FIELDS:
        return False
    message = exc.message
    if isinstance(exc, NotFound):
        message = GONE.get(name, message)
    elif name == "webhook_ids" and not shown.values["webhook_ids"]:
        message = "Choose at least one webhook to send the event to."
    elif name == "name" and not shown.values["name"]:
        message = "Name must not be empty."
    elif name == "event" and not shown.values["event"]:
        message = "Event must not be empty. Type an event such as contact.created."
    elif message.startswith(f"{name}: "):
        message = message[len(name) + 2:]
        if name == "event":
            message = "Type " + message + ", such as contact.created"
        else:
            message = f"{FIELDS[name]}: {message}"
    elif message.startswith(f"{name} "):
        message = FIELDS[name] + message[len(name):]
    shown.errors[name] = sentence(message)
    return True


@router.get("/automations/new")
async def new_automation(request: Request) -> Response:
    return await page(request, _new_page)


@router.post("/automations")
async def create_automation(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        _require_write(c, "create them")
        body, shown = _body(form)
        if "app_id" in body:  # the service takes any id; the console offers connected apps
            apps = _names(c).apps
            if body["app_id"] not in apps:
                shown.errors["app_id"] = GONE["app_id"]
                return _new_page(c, shown, 422)
        try:
            c.kp.automations.create(c.caller, c.tenant_id, body)
        except (ValidationError, NotFound) as exc:
            if not _explain(exc, shown):
                raise
            return _new_page(c, shown, 422)
        return RedirectResponse(_url("created"), status_code=303)

    return await action(request, view)


# -- turn on or off, delete -----------------------------------------------------------------

@router.post("/automations/{automation_id}/enabled")
async def switch_automation(request: Request, automation_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        rule = c.kp.automations.get(c.caller, c.tenant_id, automation_id)
        _require_write(c, "turn them on or off")
        on = form.get("enabled") == "true"
        c.kp.automations.update(c.caller, c.tenant_id, rule.id, {"enabled": on})
        return RedirectResponse(_url("enabled" if on else "disabled"), status_code=303)

    return await action(request, view)


@router.get("/automations/{automation_id}/delete")
async def confirm_delete(request: Request, automation_id: str) -> Response:
    def view(c: Console) -> Response:
        rule = c.kp.automations.get(c.caller, c.tenant_id, automation_id)
        _require_write(c, "delete them")
        return c.render("console/automation_delete.html", {
            "rule": rule, "activity": activity, "nav": "automations",
        }, title=f"Delete {rule.name}")

    return await page(request, view)


@router.post("/automations/{automation_id}/delete")
async def delete_automation(request: Request, automation_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        rule = c.kp.automations.get(c.caller, c.tenant_id, automation_id)
        _require_write(c, "delete them")
        c.kp.automations.delete(c.caller, c.tenant_id, rule.id)
        return RedirectResponse(_url("deleted"), status_code=303)

    return await action(request, view)
