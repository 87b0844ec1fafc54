"""The settings page: the tenant's Location ID, and its key policy, which admins edit through
the tenant service with their own session (the service checks every value; this page only
translates its refusals into plain words beside the field)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import ValidationError
from keyplane.core.model import TenantPolicy
from keyplane.web import pages
from keyplane.web.console.base import Console, action, page, sentence
from keyplane.web.console.forms import KeyForm

router = APIRouter(include_in_schema=False)
LABELS = {
    "default_expiry_days": "Default lifetime (days)",
    "max_expiry_days": "Maximum lifetime (days)",
    "allow_non_expiring": "Allow keys that never expire",
    "allowed_ips": "Tenant IP allowlist",
    "require_tls_default": "Require secure connections by default",
    "leaked_key_action": "When a key leaks",
    "revoke_unused_after_days": "Revoke keys unused for (days)",
    "require_admin_two_factor": "Admins must use two-factor sign-in",
    "api_users_need_group": "API users need a data access group",
}
LEAK_ACTIONS = (("revoke", "Revoke it", "The key is refused for good; its owner makes a new one."),
                ("lock", "Lock it", "The key is refused until an administrator unlocks it."))
_LINE = re.compile(r"^allowed_ips\[(\d+)\]")
_DAYS = "Enter a whole number of days, such as 90."


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _shown(policy: TenantPolicy) -> KeyForm:
    return KeyForm({
        "default_expiry_days": str(policy.default_expiry_days),
        "max_expiry_days": "" if policy.max_expiry_days is None else str(policy.max_expiry_days),
        "allow_non_expiring": policy.allow_non_expiring,
        "allowed_ips": "\n".join(policy.allowed_ips),
        "require_tls_default": policy.require_tls_default,
        "require_admin_two_factor": policy.require_admin_two_factor,
        "api_users_need_group": policy.api_users_need_group,
        "leaked_key_action": policy.leaked_key_action.value,
        "revoke_unused_after_days": ("" if policy.revoke_unused_after_days is None
                                     else str(policy.revoke_unused_after_days)),
    })


def policy_body(form: FormData) -> tuple[dict[str, Any], KeyForm]:
    """The policy the form describes, as the tenant service's ``policy`` body."""
    shown = KeyForm({
        "default_expiry_days": _text(form, "default_expiry_days").strip(),
        "max_expiry_days": _text(form, "max_expiry_days").strip(),
        "allow_non_expiring": form.get("allow_non_expiring") == "on",
        "allowed_ips": _text(form, "allowed_ips"),
        "require_tls_default": form.get("require_tls_default") == "on",
        "require_admin_two_factor": form.get("require_admin_two_factor") == "on",
        "api_users_need_group": form.get("api_users_need_group") == "on",
        "leaked_key_action": _text(form, "leaked_key_action"),
        "revoke_unused_after_days": _text(form, "revoke_unused_after_days").strip(),
    })
    values = shown.values
    body: dict[str, Any] = {
        "allow_non_expiring": values["allow_non_expiring"],
        "allowed_ips": [line.strip() for line in values["allowed_ips"].splitlines()
                        if line.strip()],
        "require_tls_default": values["require_tls_default"],
        "require_admin_two_factor": values["require_admin_two_factor"],
        "api_users_need_group": values["api_users_need_group"],
        "leaked_key_action": values["leaked_key_action"],
    }
    for name, optional in (("default_expiry_days", False), ("max_expiry_days", True),
                           ("revoke_unused_after_days", True)):
        text = values[name]
        if optional and not text:
            body[name] = None  # no maximum, or never revoke for disuse
        elif text.isdecimal() and len(text) < 7:
            body[name] = int(text)
        else:
            shown.errors[name] = _DAYS
    return body, shown


def explain(exc: ValidationError) -> tuple[str, str] | None:
    """(field, plain words) for a refusal naming ``policy.<field>``, else None."""
    name = (exc.field or "").removeprefix("policy.")
    if not (exc.field or "").startswith("policy.") or name not in LABELS:
        return None
    message = exc.message.removeprefix("policy.")
    line = _LINE.match(message)
    if line:
        message = f"line {int(line.group(1)) + 1}" + message[line.end():]
    elif message.startswith(name):
        message = LABELS[name] + message[len(name):]
    if name == "default_expiry_days" and "max_expiry_days" in message:
        message = "The default lifetime must not be longer than the maximum lifetime"
    if name == "leaked_key_action":
        message = "Choose whether a leaked key is revoked or locked"
    return name, sentence(message)


def _settings_page(c: Console, shown: KeyForm | None = None, status: int = 200) -> Response:
    tenant = c.kp.tenants.get(c.caller, c.tenant_id)
    return c.render("console/settings.html", {
        "form": shown or _shown(tenant.policy), "can_write": c.can("tenant:write"),
        "leak_actions": LEAK_ACTIONS, "labels": LABELS, "nav": "settings",
        "client_ip": pages.client_ip(c.request),
        "notice": "Saved. New keys follow the new policy from now on."
                  if c.request.query_params.get("done") == "saved" else "",
    }, status=status, title="Settings")


@router.get("/settings")
async def show_settings(request: Request) -> Response:
    return await page(request, _settings_page)


@router.post("/settings")
async def save_settings(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        body, shown = policy_body(form)
        if not shown.errors:
            try:
                c.kp.tenants.update(c.caller, c.tenant_id, {"policy": body})
            except ValidationError as exc:
                found = explain(exc)
                if found is None:
                    raise
                shown.errors[found[0]] = found[1]
            else:
                return RedirectResponse("/settings?done=saved", status_code=303)
        return _settings_page(c, shown, 422)

    return await action(request, view)
