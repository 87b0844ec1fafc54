"""The partner developers' pages: sign up (as ``KEYPLANE_PARTNER_SIGNUP`` allows), register an
app (pending until the operator approves it), follow its status, create or rotate its client
secret (shown once), and read how to start the OAuth flow. A developer sees only its own apps:
another's answer "Not found"."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core import scopes as sc
from keyplane.core.accounts import AccountKind, PartnerSignup
from keyplane.core.apps import AppStatus
from keyplane.core.errors import AuthenticationError, KeyplaneError, RateLimited, ValidationError
from keyplane.core.rights import SYSTEM
from keyplane.services.accounts import SIGNUP_LINK_LIFETIME
from keyplane.services.apps import IssuedSecret
from keyplane.web import pages
from keyplane.web.console import present
from keyplane.web.console.accounts import (
    AccountConsole,
    account_action,
    account_page,
    current_account,
    home_of,
    text,
)
from keyplane.web.console.base import read_form, render, sentence
from keyplane.web.errors import ratelimit_headers

router = APIRouter(include_in_schema=False)
DEV = AccountKind.DEVELOPER
APP_FIELDS = ("name", "description", "homepage", "redirect_uris", "scopes")
SIGNUP_FIELDS = ("email", "name", "password", "invitation")
STATUS_NOTES = {
    AppStatus.PENDING: "Waiting for the operator's approval. Until then it cannot be connected.",
    AppStatus.APPROVED: "Approved: tenant admins can connect it.",
    AppStatus.REJECTED: "Rejected by the operator. It can never be connected.",
    AppStatus.SUSPENDED: "Suspended by the operator: its tokens and flows are refused until "
                         "it is approved again.",
}


LABELS = {"name": "Name", "description": "Description", "homepage": "Homepage",
          "redirect_uris": "Redirect URIs", "scopes": "Requested scopes", "email": "Email",
          "password": "Password"}


def _errors(exc: KeyplaneError, fields: tuple[str, ...]) -> dict[str, str]:
    """The service's refusal beside its field, in the words of the form's label."""
    name = (exc.field or "").split("[")[0].split(".")[0]
    name = name if name in fields else ""
    message = exc.message
    for prefix in (f"{exc.field}: ", f"{name}: "):
        if exc.field and message.startswith(prefix):
            message = message[len(prefix):]
    if name and message.startswith(name + " "):
        message = LABELS.get(name, name) + message[len(name):]
    return {name: sentence(message)}


# -- signing up -------------------------------------------------------------------------------

def _signup_page(request: Request, *, values: dict[str, str], errors: dict[str, str],
                 status: int = 200, sent: str = "",
                 headers: dict[str, str] | None = None) -> Response:
    env = pages.env_of(request)
    cookies: list[tuple[str, str]] = []
    binding = pages.csrf_binding(request, None, None, cookies)
    mode = env.accounts.signup
    invited = ""
    if values.get("invitation"):
        try:
            invited = env.accounts.invited_email(values["invitation"])
        except AuthenticationError as exc:
            errors = {**errors, "invitation": sentence(exc.message)}
    response = render(request, "console/partner_signup.html", {
        "values": values, "errors": errors, "mode": mode.value, "invited": invited,
        "open": mode is not PartnerSignup.CLOSED and bool(invited),  # the account form
        "ask": mode is PartnerSignup.OPEN and not invited,  # "email me a link"
        "sent": sent, "hours": int(SIGNUP_LINK_LIFETIME.total_seconds() // 3600),
        "csrf_token": env.sessions.csrf_token(binding),
    }, status=status)
    for name, value in cookies:
        pages.set_cookie(request, response, name, value, max_age=None)
    response.headers.update(headers or {})
    return response


@router.get("/partners/signup")
async def signup_form(request: Request) -> Response:
    def run() -> Response:
        _raw, signed_in = current_account(request)
        if signed_in is not None:
            return RedirectResponse(home_of(signed_in), status_code=303)
        invitation = (request.query_params.get("invitation") or "")[:1000]
        return _signup_page(request, values={"email": "", "name": "", "invitation": invitation},
                            errors={})

    return await run_in_threadpool(run)


@router.post("/partners/signup")
async def signup(request: Request) -> Response:
    form = await read_form(request)

    def run() -> Response:
        env = pages.env_of(request)
        values = {k: text(form, k) for k in SIGNUP_FIELDS}
        shown = {k: values[k] for k in ("email", "name", "invitation")}
        binding = request.cookies.get(pages.csrf_cookie(request))
        if not env.sessions.csrf_ok(binding, form.get("csrf_token")):
            return _signup_page(request, values=shown, status=400, errors={
                "": "This form has expired. Please try again."})
        body: dict[str, Any] = {k: v for k, v in values.items() if v}
        ip = pages.client_ip(request)
        request_id = request.scope.get("keyplane.request_id")
        if env.accounts.signup is PartnerSignup.OPEN and not values["invitation"]:
            return _request_link(request, values["email"], ip=ip, request_id=request_id)
        try:
            raw, _who = env.accounts.sign_up(body, ip=ip, request_id=request_id)
        except KeyplaneError as exc:
            return _signup_page(request, values=shown, status=400,
                                errors=_errors(exc, ("email", "name", "password")))
        response = RedirectResponse("/partners/apps/new", status_code=303)
        pages.set_cookie(request, response, pages.session_cookie(request), raw,
                         max_age=int(env.accounts.lifetime.total_seconds()))
        return response

    return await run_in_threadpool(run)


def _request_link(request: Request, email: str, *, ip: str | None,
                  request_id: str | None) -> Response:
    """Open sign-up's first step: the same answer whether or not the address has an account;
    the lookup and the mail run after it is sent, so it takes as long either way."""
    accounts = pages.env_of(request).accounts
    values = {"email": email, "name": "", "invitation": ""}
    try:
        address = accounts.request_signup(email, ip=ip)
    except ValidationError:
        return _signup_page(request, values=values, status=422,
                            errors={"email": "Enter the email address to send the link to."})
    except RateLimited as exc:
        return _signup_page(request, values=values, status=429, errors={
            "": "Too many sign-up requests. Please try again in an hour."},
            headers=ratelimit_headers(exc.retry_after, exc.limit, exc.remaining))
    answer = _signup_page(request, values=values, errors={}, sent=address)
    answer.background = BackgroundTask(accounts.send_signup, address, ip=ip,
                                       request_id=request_id)
    return answer


# -- apps -------------------------------------------------------------------------------------

@router.get("/partners")
async def home(request: Request) -> Response:
    def view(c: AccountConsole) -> Response:
        result = c.kp.apps.list(c.caller, None, limit=200)
        return c.render("console/partner_apps.html", {
            "apps": result.items, "notes": STATUS_NOTES, "nav": "apps",
            "times": present.Times(c.kp.ctx.clock.now()),
        }, title="Your apps")

    return await account_page(request, DEV, view)


def _data_rows(c: AccountConsole, chosen: list[str]) -> list[present.Row]:
    # what an app may ask for: the catalogue's data scopes (the grid's first part); every box
    # can be ticked, the operator decides
    return present.scope_grids(c.kp.ctx.catalogue(), chosen, SYSTEM)[0].rows


def _new_app(c: AccountConsole, values: dict[str, Any], errors: dict[str, str],
             status: int = 200) -> Response:
    return c.render("console/partner_app_new.html", {
        "values": values, "errors": errors, "rows": _data_rows(c, values["scopes"]),
        "nav": "new"}, title="Register an app", status=status)


@router.get("/partners/apps/new")
async def new_app(request: Request) -> Response:
    return await account_page(request, DEV, lambda c: _new_app(c, {
        "name": "", "description": "", "homepage": "", "redirect_uris": "", "scopes": []}, {}))


@router.post("/partners/apps")
async def register(request: Request) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        values: dict[str, Any] = {k: text(form, k) for k in APP_FIELDS[:4]}
        # a ticked Edit asks for View too, so the app may request either in its flows
        values["scopes"] = sorted(sc.expand(
            s for s in form.getlist("scopes")[:200] if isinstance(s, str)))
        body = {"name": values["name"], "description": values["description"],
                "homepage": values["homepage"],
                "redirect_uris": [u.strip() for u in values["redirect_uris"].splitlines()
                                  if u.strip()],
                "scopes": values["scopes"]}
        try:
            app = c.kp.apps.register(c.caller, None, body)
        except KeyplaneError as exc:
            if exc.field is None:
                raise
            return _new_app(c, values, _errors(exc, APP_FIELDS), status=400)
        return RedirectResponse(f"/partners/apps/{app.id}?done=registered", status_code=303)

    return await account_action(request, DEV, view)


def _app_page(c: AccountConsole, app_id: str, *, issued: IssuedSecret | None = None) -> Response:
    env = c.kp
    app = env.apps.get(c.caller, None, app_id)
    notice = {"registered": "Registered. The operator has been asked to approve it."}.get(
        c.request.query_params.get("done", ""), "")
    return c.render("console/partner_app.html", {
        "app": app, "note": STATUS_NOTES[app.status], "issued": issued, "notice": notice,
        "scopes": present.shown_scopes(app.scopes), "issuer": env.issuer,
        "can_rotate": app.client_id is not None and app.status in (AppStatus.APPROVED,
                                                                   AppStatus.SUSPENDED),
        "times": present.Times(c.kp.ctx.clock.now()), "nav": "apps",
    }, title=app.name)


@router.get("/partners/apps/{app_id}")
async def app_detail(request: Request, app_id: str) -> Response:
    return await account_page(request, DEV, lambda c: _app_page(c, app_id))


@router.post("/partners/apps/{app_id}/rotate-secret")
async def rotate_secret(request: Request, app_id: str) -> Response:
    def view(c: AccountConsole, form: FormData) -> Response:
        later = form.get("expire") == "later"
        days = text(form, "grace_days") or "7"
        grace = int(days) * 86400 if later and days.isdigit() and int(days) <= 30 else 0
        issued = c.kp.apps.rotate_secret(c.caller, None, app_id,
                                                    {"grace_period_seconds": grace})
        return _app_page(c, app_id, issued=issued)

    return await account_action(request, DEV, view)


@router.get("/partners/guide")
async def guide(request: Request) -> Response:
    def view(c: AccountConsole) -> Response:
        return c.render("console/partner_guide.html", {
            "issuer": c.kp.issuer, "nav": "guide"}, title="OAuth guide")

    return await account_page(request, DEV, view)
