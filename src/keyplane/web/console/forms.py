"""Key forms: what people typed, as the key service's request bodies, and the services' refusals
as plain words beside the field they concern. The services check everything; this only
translates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import FormData

from keyplane.core.errors import KeyplaneError, PermissionDenied, ValidationError
from keyplane.services import validate as v
from keyplane.web.console.base import sentence
from keyplane.web.console.present import minimal_scopes, scope_label

LABELS = {
    "name": "Name", "description": "Description", "owner_id": "Owner", "scopes": "Scopes",
    "expires_in_days": "Validity (days)", "allowed_ips": "Allowed IPs",
    "require_tls": "Require secure connections", "grace_period_seconds": "Grace period (days)",
}
_SCOPE_IN_QUOTES = re.compile(r"'([a-z][a-z0-9_-]{0,39}:[a-z][a-z0-9_-]{0,19})'")
_LINE = re.compile(r"^allowed_ips\[(\d+)\]")


@dataclass
class KeyForm:
    """The values to show again in a form, and the errors beside its fields."""

    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def general(self) -> str:
        return self.errors.get("", "")


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _scopes(form: FormData) -> list[str]:
    return minimal_scopes(s for s in form.getlist("scopes") if isinstance(s, str))


def settings_body(form: FormData) -> tuple[dict[str, Any], KeyForm]:
    """Name, description, scopes, allowed IPs, require TLS: the fields create and edit share."""
    ips = _text(form, "allowed_ips")
    values: dict[str, Any] = {
        "name": _text(form, "name"), "description": _text(form, "description"),
        "scopes": _scopes(form), "allowed_ips": ips, "require_tls": form.get("require_tls") == "on"}
    body = {**values, "allowed_ips": _lines(ips)}
    return body, KeyForm(values)


def create_body(form: FormData) -> tuple[dict[str, Any], KeyForm]:
    body, shown = settings_body(form)
    owner = _text(form, "owner_id")
    days = _text(form, "expires_in_days").strip()
    shown.values.update(owner_id=owner, expires_in_days=days)
    if owner:
        body["owner_id"] = owner
    if not days:
        body["expires_in_days"] = None  # never expires, if the tenant's policy allows it
    elif days.isdecimal() and len(days) < 7:
        body["expires_in_days"] = int(days)
    else:
        shown.errors["expires_in_days"] = "Enter a whole number of days, such as 90."
    return body, shown


def rotate_body(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """``expire=later`` with ``grace_days``, or ``expire=now``; no grace given: the service's
    default grace."""
    if form.get("expire") == "now":
        return {"grace_period_seconds": 0}, {}
    days = _text(form, "grace_days").strip()
    if not days:
        return {}, {}
    if not (days.isdecimal() and len(days) < 4 and int(days) >= 1):
        return {}, {"grace_period_seconds": "Enter a whole number of days, such as 7, or "
                    "choose to expire the old key now."}
    return {"grace_period_seconds": int(days) * 86400}, {}


def explain(exc: KeyplaneError) -> tuple[str, str] | None:
    """(field, plain words) for a refusal that concerns one field of a key form, else None."""
    if not isinstance(exc, ValidationError | PermissionDenied) or exc.field not in LABELS:
        return None
    name = exc.field
    message = exc.message
    if name == "grace_period_seconds":
        most = v.MAX_GRACE_SECONDS // 86400
        return name, f"The grace period must be between 1 and {most} days."
    line = _LINE.match(message)
    if line:
        message = f"line {int(line.group(1)) + 1}" + message[line.end():]
    elif message.startswith(f"{name}: "):
        message = message[len(name) + 2:]
    elif message.startswith(f"{name} "):
        message = LABELS[name] + message[len(name):]
    message = message.replace("this credential does not hold", "you do not hold").replace(
        "so it cannot grant it", "so you cannot grant it")
    message = _SCOPE_IN_QUOTES.sub(lambda m: f"“{scope_label(m.group(1))}”", message)
    return name, sentence(message)
