"""The operator's pages, for operator staff: tenants (create, disable), partner apps (approve,
reject, suspend), the scope catalogue, and operator keys (create with a one-time secret,
revoke). Every action goes through the same services as the operator's key, and every
destructive one asks first."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core import scopes as sc
from keyplane.core.accounts import AccountKind
from keyplane.core.apps import AppStatus
from keyplane.core.errors import KeyplaneError, ValidationError
from keyplane.services.accounts import Invitation
from keyplane.services.keys import IssuedKey
from keyplane.web.console import present
from keyplane.web.console.accounts import AccountConsole, account_action, account_page, text
from keyplane.web.console.base import sentence

router = APIRouter(include_in_schema=False)
OP = AccountKind.OPERATOR
PAGE_SIZE = 50
DECISIONS = {
    "approve": ("Approve", "It can be connected by tenant admins at once: its OAuth flow starts "
                "working, and its developer can create its client secret."),
    "reject": ("Reject", "The developer sees it rejected, with your reason. It can never be "
               "connected."),
    "suspend": ("Suspend", "Its authorisations and every token of every connection stop "
                "working at once, until you approve it again."),
}
NOTICES = {
    "created": "Tenant created.", "disabled": "Tenant disabled. Its members and keys are "
    "refused from now on.", "enabled": "Tenant enabled again.",
    "approve": "Approved.", "reject": "Rejected.", "suspend": "Suspended.",
    "revoked": "Operator key revoked. It is refused from now on.",
    "invited": "Invitation made.",
}


def _notice(c: AccountConsole) -> str:
    return NOTICES.get(c.request.query_params.get("done", ""), "")


def _field_errors(exc: KeyplaneError, fields: tuple[str, ...]) -> dict[str, str]:
    name = exc.field if exc.field in fields else ""
    message = exc.message
    if name and message.startswith(f"{name}: "):
        message = message[len(name) + 2:]
    return {name: sentence(message)}


@router.get("/operator")
async def home(request: Request) -> Response:
    return await account_page(request, OP,
                              lambda c: RedirectResponse("/operator/apps", status_code=303))


# -- tenants --------------------------------------------------------------------------------

def _tenants(c: AccountConsole, *, name: str = "", errors: dict[str, str] | None = None,
             status: int = 200) -> Response:
    cursor = c.cursor
    result = c.kp.tenants.list(c.caller, limit=PAGE_SIZE, cursor=cursor)
    next_url = ("/operator/tenants?" + urlencode({"cursor": result.next_cursor})
                if result.next_cursor else None)
    return c.render("console/operator_tenants.html", {
        "tenants": result.items, "next_url": next_url, "paged": cursor is not None,
        "name": name, "errors": errors or {}, "notice": _notice(c),
        "times": present.Times(c.kp.ctx.clock.now()), "nav": "tenants",
    }, title="Tenants", status=status)


@router.get("/operator/tenants")
async def tenants(request: Request) -> Response:
    return await account_page(request, OP, _tenants)


@router.post("/operator/tenants")
async def create_tenant(request: Request) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        name = text(form, "name")
        try:
            c.kp.tenants.create(c.caller, {"name": name})
        except ValidationError as exc:
            return _tenants(c, name=name, errors=_field_errors(exc, ("name",)), status=400)
        return RedirectResponse("/operator/tenants?done=created", status_code=303)

    return await account_action(request, OP, view)


@router.get("/operator/tenants/{tenant_id}/disable")
async def confirm_disable(request: Request, tenant_id: str) -> Response:
    def view(c: AccountConsole) -> Response:
        tenant = c.kp.tenants.get(c.caller, tenant_id)
        return c.render("console/operator_tenant_disable.html", {"tenant": tenant,
                                                                "nav": "tenants"},
                        title=f"Disable {tenant.name}")

    return await account_page(request, OP, view)


async def _set_enabled(request: Request, tenant_id: str, enabled: bool) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        c.kp.tenants.update(c.caller, tenant_id, {"enabled": enabled})
        done = "enabled" if enabled else "disabled"
        return RedirectResponse(f"/operator/tenants?done={done}", status_code=303)

    return await account_action(request, OP, view)


@router.post("/operator/tenants/{tenant_id}/disable")
async def disable_tenant(request: Request, tenant_id: str) -> Response:
    return await _set_enabled(request, tenant_id, False)


@router.post("/operator/tenants/{tenant_id}/enable")
async def enable_tenant(request: Request, tenant_id: str) -> Response:
    return await _set_enabled(request, tenant_id, True)


# -- partner apps ---------------------------------------------------------------------------

@router.get("/operator/apps")
async def apps(request: Request) -> Response:
    def view(c: AccountConsole) -> Response:
        status = c.request.query_params.get("status") or "pending"
        status = status if status in {s.value for s in AppStatus} | {"all"} else "pending"
        cursor = c.cursor
        result = c.kp.apps.list(c.caller, None, limit=PAGE_SIZE, cursor=cursor,
                                           status=None if status == "all" else status)
        next_url = ("/operator/apps?" + urlencode({"status": status,
                                                   "cursor": result.next_cursor})
                    if result.next_cursor else None)
        return c.render("console/operator_apps.html", {
            "apps": result.items, "status": status, "next_url": next_url,
            "paged": cursor is not None, "notice": _notice(c),
            "times": present.Times(c.kp.ctx.clock.now()), "nav": "apps",
            "statuses": ["pending", "approved", "suspended", "rejected", "all"],
        }, title="Partner apps")

    return await account_page(request, OP, view)


def _app_context(c: AccountConsole, app_id: str) -> dict[str, Any]:
    found = c.kp.apps.get(c.caller, None, app_id)
    developer = None
    if found.developer_id:
        developer = c.kp.accounts.get(c.caller, found.developer_id)
    return {"app": found, "developer": developer, "scopes": present.shown_scopes(found.scopes),
            "times": present.Times(c.kp.ctx.clock.now()), "nav": "apps",
            "decisions": {a: DECISIONS[a] for a in DECISIONS
                          if found.status in _FROM[a]}}


_FROM = {"approve": (AppStatus.PENDING, AppStatus.SUSPENDED), "reject": (AppStatus.PENDING,),
         "suspend": (AppStatus.APPROVED,)}


@router.get("/operator/apps/{app_id}")
async def app_detail(request: Request, app_id: str) -> Response:
    def view(c: AccountConsole) -> Response:
        context = _app_context(c, app_id)
        return c.render("console/operator_app.html", {**context, "notice": _notice(c)},
                        title=context["app"].name)

    return await account_page(request, OP, view)


@router.get("/operator/apps/{app_id}/{decision}")
async def confirm_decision(request: Request, app_id: str, decision: str) -> Response:
    def view(c: AccountConsole) -> Response:
        context = _app_context(c, app_id)
        if decision not in context["decisions"]:
            return c.error(404, "Not found", "This app cannot be changed that way now.")
        label, effect = DECISIONS[decision]
        return c.render("console/operator_app_decide.html", {
            **context, "decision": decision, "label": label, "effect": effect,
        }, title=f"{label} {context['app'].name}")

    return await account_page(request, OP, view)


@router.post("/operator/apps/{app_id}/{decision}")
async def decide(request: Request, app_id: str, decision: str) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        if decision not in DECISIONS:
            return c.error(404, "Not found", "There is nothing here.")
        # the client secret an approval issues is not shown here: the developer creates
        # its own from its app's page, so the operator's staff never see it
        c.kp.apps.decide(c.caller, app_id, decision, text(form, "reason") or None)
        return RedirectResponse(f"/operator/apps/{app_id}?done={decision}", status_code=303)

    return await account_action(request, OP, view)


# -- scope catalogue --------------------------------------------------------------------------

@router.get("/operator/scopes")
async def scopes(request: Request) -> Response:
    def view(c: AccountConsole) -> Response:
        entries = c.kp.catalogue.list()
        rows = [{"name": n, "label": present.scope_label(n), "description": d,
                 "kind": ("Operator" if n.startswith("platform:") or n == "keys:verify"
                          else "Management" if sc.is_management(n) else "Data")}
                for n, d in sorted(entries.items())]
        return c.render("console/operator_scopes.html", {"rows": rows, "nav": "scopes"},
                        title="Scope catalogue")

    return await account_page(request, OP, view)


# -- operator keys ----------------------------------------------------------------------------

KEY_SCOPES = {"keys:verify": "Verify keys (for your API servers and gateways)",
              "platform:read": "Read every tenant (platform View)",
              "platform:write": "Manage every tenant (platform Edit)"}


def _keys(c: AccountConsole, *, values: dict[str, Any] | None = None,
          errors: dict[str, str] | None = None, issued: IssuedKey | None = None,
          status: int = 200) -> Response:
    result = c.kp.keys.list(c.caller, None, operator=True, limit=200)
    return c.render("console/operator_keys.html", {
        "keys": result.items, "values": values or {"name": "", "scopes": ["keys:verify"],
                                                   "require_tls": True, "allowed_ips": ""},
        "errors": errors or {}, "issued": issued, "key_scopes": KEY_SCOPES,
        "notice": _notice(c), "times": present.Times(c.kp.ctx.clock.now()), "nav": "keys",
    }, title="Operator keys", status=status)


@router.get("/operator/keys")
async def keys(request: Request) -> Response:
    return await account_page(request, OP, _keys)


@router.post("/operator/keys")
async def create_key(request: Request) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        chosen = [s for s in form.getlist("scopes") if isinstance(s, str)]
        ips = text(form, "allowed_ips")
        values = {"name": text(form, "name"), "scopes": chosen, "allowed_ips": ips,
                  "require_tls": form.get("require_tls") == "on"}
        body = {"name": values["name"], "scopes": chosen, "require_tls": values["require_tls"],
                "allowed_ips": [line.strip() for line in ips.splitlines() if line.strip()]}
        if not chosen:
            return _keys(c, values=values, errors={"scopes": "Choose at least one scope."},
                         status=400)
        try:
            issued = c.kp.keys.create(c.caller, None, body, operator=True)
        except ValidationError as exc:
            field = (exc.field or "").split("[")[0]
            return _keys(c, values=values, errors=_field_errors(
                ValidationError(exc.message, field=field), ("name", "scopes", "allowed_ips")),
                status=400)
        return _keys(c, issued=issued)

    return await account_action(request, OP, view)


@router.get("/operator/keys/{key_id}/revoke")
async def confirm_revoke_key(request: Request, key_id: str) -> Response:
    def view(c: AccountConsole) -> Response:
        key = c.kp.keys.get(c.caller, None, key_id, operator=True)
        return c.render("console/operator_key_revoke.html", {
            "key": key, "times": present.Times(c.kp.ctx.clock.now()), "nav": "keys"},
            title=f"Revoke {key.name}")

    return await account_page(request, OP, view)


@router.post("/operator/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        c.kp.keys.revoke(c.caller, None, key_id, operator=True)
        return RedirectResponse("/operator/keys?done=revoked", status_code=303)

    return await account_action(request, OP, view)


# -- partner developers -------------------------------------------------------------------------

def _partners(c: AccountConsole, *, email: str = "", errors: dict[str, str] | None = None,
              invitation: Invitation | None = None, status: int = 200) -> Response:
    result = c.kp.accounts.list(c.caller, AccountKind.DEVELOPER, limit=PAGE_SIZE,
                                           cursor=c.cursor)
    env = c.kp
    return c.render("console/operator_partners.html", {
        "developers": result.items, "email": email, "errors": errors or {},
        "invitation": invitation, "signup": env.accounts.signup.value,
        "link": (f"{env.issuer}/partners/signup?invitation={invitation.token}"
                 if invitation else ""),
        "times": present.Times(c.kp.ctx.clock.now()), "nav": "partners",
    }, title="Partner developers", status=status)


@router.get("/operator/partners")
async def partners(request: Request) -> Response:
    return await account_page(request, OP, _partners)


@router.post("/operator/partners")
async def invite(request: Request) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        email = text(form, "email")
        try:
            made = c.kp.accounts.invite(c.caller, email)
        except KeyplaneError as exc:
            if exc.field != "email" and not isinstance(exc, ValidationError):
                raise
            return _partners(c, email=email, errors=_field_errors(exc, ("email",)),
                             status=400)
        return _partners(c, invitation=made)

    return await account_action(request, OP, view)
