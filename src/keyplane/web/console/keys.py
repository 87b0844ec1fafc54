"""The API keys pages: list, create, detail (edit in place), rotate, duplicate, lock, unlock and
delete. A new secret is shown once, in the answer to the POST that made it, never in a URL, a
redirect or a cookie."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import NotFound, PermissionDenied, ValidationError
from keyplane.core.model import ApiKey, Principal
from keyplane.core.scopes import is_management
from keyplane.web import fresh, pages
from keyplane.web.console import forms, present
from keyplane.web.console.base import Console, action, page

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 25
MAX_PRINCIPALS = 2000  # owners offered in a form's list (the newest); names are read as needed
STATES = {"all": None, "enabled": True, "locked": False}
NOTICES = {
    "saved": "Saved. Scope changes take effect at once.",
    "locked": "Locked. The key is refused until it is unlocked.",
    "unlocked": "Unlocked. The key works again.",
    "deleted": "Deleted. The key is refused from now on.",
}


@dataclass(frozen=True)
class OneTime:
    """A secret to show once, in a dialog that closes only once the person has stored it."""

    secret: str
    title: str
    note: str


def principals_of(c: Console) -> list[Principal]:
    out: list[Principal] = []
    cursor = None
    while len(out) < MAX_PRINCIPALS:
        batch = c.kp.principals.list(c.caller, c.tenant_id, kind=None,
                                     limit=min(200, MAX_PRINCIPALS - len(out)), cursor=cursor)
        out.extend(batch.items)
        cursor = batch.next_cursor
        if cursor is None:
            break
    return out


def owner_names(c: Console, principal_ids: Iterable[str | None]) -> dict[str, str]:
    """How a page names these owners or actors (ids of no principal of this tenant are left
    out), read in one go however many principals the tenant has."""
    named = c.kp.principals.named(c.caller, c.tenant_id, (i for i in principal_ids if i))
    return {pid: present.owner_name(p) for pid, p in named.items()}


def _key_url(key_id: str, done: str | None = None) -> str:
    return f"/keys/{quote(key_id, safe='')}" + (f"?done={done}" if done else "")


def _if_match(form: FormData) -> list[str] | None:
    version = form.get("version")
    return [version] if isinstance(version, str) and version else None


def _notice(c: Console) -> str:
    return NOTICES.get(c.request.query_params.get("done", ""), "")


@router.get("/")
async def home(request: Request) -> Response:
    return await page(request, lambda c: RedirectResponse("/keys", status_code=303))


@router.get("/keys")
async def list_keys(request: Request) -> Response:
    def view(c: Console) -> Response:
        params = c.request.query_params
        q = (params.get("q") or "").strip()[:200]
        searched = q.removeprefix(f"{c.kp.ctx.key_prefix}_")  # starts are shown with it
        state = params.get("state") or "all"
        state = state if state in STATES else "all"
        cursor = c.cursor
        owner = (params.get("owner") or "")[:100]
        # another tenant's id: no filter, no oracle
        owner = owner if owner and owner_names(c, [owner]) else ""
        result = c.kp.keys.list(c.caller, c.tenant_id, enabled=STATES[state], q=searched or None,
                                owner_id=owner or None, limit=PAGE_SIZE, cursor=cursor)
        owners = owner_names(c, [k.owner_id for k in result.items])
        choices = {p.id: present.owner_name(p) for p in principals_of(c)}
        now = c.kp.ctx.clock.now()
        next_url = None
        filters = {"q": q, "state": state, "owner": owner}
        if result.next_cursor:
            query = {**filters, "cursor": result.next_cursor}
            next_url = "/keys?" + urlencode({k: v for k, v in query.items() if v})
        first_url = "/keys?" + urlencode({k: v for k, v in filters.items()
                                          if v and v != "all"})
        return c.render("console/keys.html", {
            "rows": [present.key_row(k, now, owners) for k in result.items],
            "owner": owner, "owners": sorted(choices.items(), key=lambda item: item[1].lower()),
            "q": q, "state": state, "paged": cursor is not None, "next_url": next_url,
            "first_url": first_url.rstrip("?"), "can_write": c.can("keys:write"),
            "notice": _notice(c), "times": present.Times(now),
        }, title="API keys")

    return await page(request, view)


# -- create -------------------------------------------------------------------------------------

def _new_page(c: Console, shown: forms.KeyForm | None = None, status: int = 200) -> Response:
    if not c.can("keys:write"):
        raise PermissionDenied("your role lets you view keys, not create them")
    policy = c.signed_in.tenant.policy
    owners = [p for p in principals_of(c) if p.enabled]
    chosen = next((p for p in owners if p.id == c.request.query_params.get("owner")), None)
    shown = shown or forms.KeyForm({
        "name": "", "description": "",
        "owner_id": chosen.id if chosen else c.caller.principal_id or "",
        "scopes": [], "expires_in_days": str(policy.default_expiry_days), "allowed_ips": "",
        "require_tls": policy.require_tls_default,
    })
    made = ""
    if chosen is not None and c.request.query_params.get("made") == "1":
        made = f"API user “{chosen.name}” created. Now create its first key: it is the owner."
        note = c.kp.principals.no_data_note(chosen)
        if note is not None:
            made += " " + note
    return c.render("console/key_new.html", {
        "form": shown, "policy": policy, "notice": made,
        "ask_code": fresh.needs_code(pages.env_of(c.request), c.signed_in),
        "owners": [(p.id, present.owner_label(p)) for p in owners],
        "grids": present.scope_grids(c.kp.ctx.catalogue(), shown.values["scopes"], c.caller),
    }, status=status, title="Create key")


@router.get("/keys/new")
async def new_key(request: Request) -> Response:
    return await page(request, _new_page)


@router.post("/keys")
async def create_key(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        body, shown = forms.create_body(form)
        status = 422
        if not shown.errors and any(is_management(s) for s in body["scopes"]):
            # a key with admin rights: a fresh second factor, when the person has one
            words = fresh.refused(pages.env_of(c.request), c.signed_in, form.get(fresh.FIELD))
            if words:
                shown.errors[fresh.FIELD] = words
                status = 401
        if not shown.errors:
            try:
                issued = c.kp.keys.create(c.caller, c.tenant_id, body)
            except (ValidationError, PermissionDenied) as exc:
                found = forms.explain(exc)
                if found is None:
                    raise
                shown.errors[found[0]] = found[1]
                status = 403 if isinstance(exc, PermissionDenied) else 422
            else:
                return _detail_page(c, issued.key, issued=OneTime(
                    issued.secret, "Your new API key",
                    f"“{issued.key.name}” is ready. Use it as a bearer token."))
        return _new_page(c, shown, status)

    return await action(request, view)


# -- detail -------------------------------------------------------------------------------------

def _detail_page(c: Console, key: ApiKey, *, shown: forms.KeyForm | None = None,
                 rotate_errors: dict[str, str] | None = None, issued: OneTime | None = None,
                 status: int = 200) -> Response:
    now = c.kp.ctx.clock.now()
    owners = {}
    if key.owner_id:
        try:
            owner = c.kp.principals.get(c.caller, c.tenant_id, key.owner_id)
            owners[owner.id] = present.owner_label(owner)
        except NotFound:
            pass
    can_write = c.can("keys:write")
    shown = shown or forms.KeyForm({
        "name": key.name, "description": key.description, "scopes": key.scopes,
        "allowed_ips": "\n".join(key.allowed_ips), "require_tls": key.require_tls,
    })
    return c.render("console/key_detail.html", {
        "key": key, "row": present.key_row(key, now, owners), "form": shown,
        "grids": present.scope_grids(c.kp.ctx.catalogue(), shown.values["scopes"], c.caller),
        "can_write": can_write, "can_control": can_write and not c.caller.lacks(key.scopes),
        "rotate_errors": rotate_errors or {}, "issued": issued, "notice": _notice(c),
        "times": present.Times(now),
        "usage": present.usage_chart(c.kp.usage_reports.daily(c.caller, c.tenant_id, key.id)),
        "denials": c.kp.usage_reports.last_denials(c.caller, c.tenant_id, key.id, limit=10),
        "outcome_label": present.outcome_label,
    }, status=status, title=key.name)


@router.get("/keys/{key_id}")
async def show_key(request: Request, key_id: str) -> Response:
    return await page(request, lambda c: _detail_page(
        c, c.kp.keys.get(c.caller, c.tenant_id, key_id)))


@router.post("/keys/{key_id}")
async def edit_key(request: Request, key_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        body, shown = forms.settings_body(form)
        try:
            c.kp.keys.update(c.caller, c.tenant_id, key_id, body, if_match=_if_match(form))
        except (ValidationError, PermissionDenied) as exc:
            found = forms.explain(exc)
            if found is None:
                raise
            shown.errors[found[0]] = found[1]
            key = c.kp.keys.get(c.caller, c.tenant_id, key_id)
            return _detail_page(c, key, shown=shown,
                                status=403 if isinstance(exc, PermissionDenied) else 422)
        return RedirectResponse(_key_url(key_id, "saved"), status_code=303)

    return await action(request, view)


@router.post("/keys/{key_id}/rotate")
async def rotate_key(request: Request, key_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        body, errors = forms.rotate_body(form)
        if not errors:
            try:
                issued = c.kp.keys.rotate(c.caller, c.tenant_id, key_id, body,
                                          if_match=_if_match(form))
            except ValidationError as exc:
                found = forms.explain(exc)
                if found is None:
                    raise
                errors[found[0]] = found[1]
            else:
                times = present.Times(c.kp.ctx.clock.now())
                until = issued.key.previous_expires_at
                note = (f"The old secret keeps working until {times.full(until)}."
                        if until else "The old secret no longer works.")
                return _detail_page(c, issued.key, issued=OneTime(
                    issued.secret, "The new secret of this key", note))
        key = c.kp.keys.get(c.caller, c.tenant_id, key_id)
        return _detail_page(c, key, rotate_errors=errors, status=422)

    return await action(request, view)


@router.post("/keys/{key_id}/duplicate")
async def duplicate_key(request: Request, key_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        issued = c.kp.keys.duplicate(c.caller, c.tenant_id, key_id, {})
        return _detail_page(c, issued.key, issued=OneTime(
            issued.secret, "Your new API key",
            f"“{issued.key.name}” has the same settings as the key it copies, and its own "
            "secret."))

    return await action(request, view)


def _set_enabled(enabled: bool) -> Callable[[Request, str], Awaitable[Response]]:
    async def route(request: Request, key_id: str) -> Response:
        def view(c: Console, form: FormData) -> Response:
            c.kp.keys.update(c.caller, c.tenant_id, key_id, {"enabled": enabled},
                             if_match=_if_match(form))
            return RedirectResponse(_key_url(key_id, "unlocked" if enabled else "locked"),
                                    status_code=303)

        return await action(request, view)

    return route


router.add_api_route("/keys/{key_id}/lock", _set_enabled(False), methods=["POST"])
router.add_api_route("/keys/{key_id}/unlock", _set_enabled(True), methods=["POST"])


@router.get("/keys/{key_id}/delete")
async def confirm_delete(request: Request, key_id: str) -> Response:
    def view(c: Console) -> Response:
        key = c.kp.keys.get(c.caller, c.tenant_id, key_id)
        if not c.can("keys:write"):
            raise PermissionDenied("your role lets you view keys, not delete them")
        return c.render("console/key_delete.html", {"key": key},
                        title=f"Delete {key.name}")

    return await page(request, view)


@router.post("/keys/{key_id}/delete")
async def delete_key(request: Request, key_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        c.kp.keys.revoke(c.caller, c.tenant_id, key_id, reason="deleted in the console")
        return RedirectResponse("/keys?done=deleted", status_code=303)

    return await action(request, view)
