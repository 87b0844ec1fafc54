"""Pages reached without a session: "Forgot password?" (``/signin/forgot``), an invitation
(``/join/{token}``) and a password reset link (``/reset/{token}``). They parse the form, call
the account service and say its answer in plain words."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import Conflict, NotFound, RateLimited, ValidationError
from keyplane.core.sign_in import LinkKind
from keyplane.services.links import RESET_LIFETIME
from keyplane.services.passwords import MIN_PASSWORD
from keyplane.web import pages
from keyplane.web.errors import ratelimit_headers

router = APIRouter(include_in_schema=False)
MAX_FORM_FIELDS = 10
EXPIRED_FORM = "This form has expired. Reload the page and try again."


def _page(request: Request, template: str, context: dict[str, Any], *,
          status: int = 200, headers: dict[str, str] | None = None) -> Response:
    cookies: list[tuple[str, str]] = []
    binding = pages.csrf_binding(request, None, None, cookies)
    env = pages.env_of(request)
    response = pages.render(request, template, {
        **context, "csrf_token": env.sessions.csrf_token(binding)}, status=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    for name, value in cookies:
        pages.set_cookie(request, response, name, value, max_age=None)
    return response


def _csrf_ok(request: Request, form: FormData) -> bool:
    binding = request.cookies.get(pages.csrf_cookie(request))
    return pages.env_of(request).sessions.csrf_ok(binding, form.get("csrf_token"))


def _gone(request: Request, message: str) -> Response:
    return pages.render(request, "message.html", {
        "title": "This link no longer works", "message": message[:1].upper() + message[1:] + "."},
        status=404)


# -- forgot password --------------------------------------------------------------------------

def _forgot(request: Request, *, email: str = "", error: str = "", sent: bool = False,
            status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return _page(request, "forgot.html", {
        "email": email, "error": error, "sent": sent,
        "minutes": int(RESET_LIFETIME.total_seconds() // 60)}, status=status, headers=headers)


@router.get("/signin/forgot")
async def forgot_form(request: Request) -> Response:
    return _forgot(request)


@router.post("/signin/forgot")
async def forgot(request: Request) -> Response:
    """The same answer whether or not the address has an account."""
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    email = form.get("email")
    email = email if isinstance(email, str) else ""
    if not _csrf_ok(request, form):
        return _forgot(request, email=email, error=EXPIRED_FORM, status=400)
    links = pages.env_of(request).links
    ip = pages.client_ip(request)
    try:
        address = await run_in_threadpool(links.request_reset, email, ip=ip)
    except ValidationError:
        return _forgot(request, email=email, status=422,
                       error="Enter the email address you sign in with.")
    except RateLimited as exc:
        return _forgot(request, email=email, status=429,
                       error="Too many reset requests. Wait an hour and try again.",
                       headers=ratelimit_headers(exc.retry_after, exc.limit, exc.remaining))
    answer = _forgot(request, sent=True)
    # the lookup and the mail run after the answer is sent: it takes as long either way
    answer.background = BackgroundTask(links.send_reset, address, ip=ip)
    return answer


# -- invitations and reset links --------------------------------------------------------------

TEXTS = {
    LinkKind.INVITE: ("Join {tenant}", "You are invited to {tenant} as {role}. Choose a "
                      "password to finish setting up your account.", "Create my account"),
    LinkKind.RESET: ("Set a new password", "Choose a new password for {tenant}. Your other "
                     "sessions will be signed out.", "Set my password"),
}


def _link_page(request: Request, kind: LinkKind, token: str, *, name: str = "",
               error: str = "", password_error: str = "", status: int = 200) -> Response:
    links = pages.env_of(request).links
    try:
        opened = links.open(token, kind)
    except NotFound as exc:
        return _gone(request, exc.message)
    heading, intro, button = TEXTS[kind]
    words = {"tenant": opened.tenant.name,
             "role": (opened.link.role or "member").replace("_", " ")}
    return _page(request, "set_password.html", {
        "heading": heading.format(**words), "intro": intro.format(**words), "button": button,
        "action": f"/{'join' if kind is LinkKind.INVITE else 'reset'}/{token}",
        "email": opened.link.email, "ask_name": kind is LinkKind.INVITE, "name": name,
        "error": error, "password_error": password_error, "min_password": MIN_PASSWORD,
    }, status=status)


async def _use(request: Request, kind: LinkKind, token: str) -> Response:
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    name = form.get("name")
    name = name.strip() if isinstance(name, str) else ""
    if not _csrf_ok(request, form):
        return await run_in_threadpool(_link_page, request, kind, token, name=name,
                                       error=EXPIRED_FORM, status=400)
    links = pages.env_of(request).links
    ip = pages.client_ip(request)
    try:
        if kind is LinkKind.INVITE:
            await run_in_threadpool(links.accept, token, name, form.get("password"), ip=ip)
        else:
            await run_in_threadpool(links.reset, token, form.get("password"), ip=ip)
    except NotFound as exc:
        return _gone(request, exc.message)
    except (ValidationError, Conflict) as exc:
        if exc.field == "password":
            words = f"Choose a password of at least {MIN_PASSWORD} characters."
            return await run_in_threadpool(_link_page, request, kind, token, name=name,
                                           password_error=words, status=422)
        message = exc.message[:1].upper() + exc.message[1:] + "."
        return await run_in_threadpool(_link_page, request, kind, token, name=name,
                                       error=message, status=409 if isinstance(
                                           exc, Conflict) else 422)
    done = "joined" if kind is LinkKind.INVITE else "reset"
    return RedirectResponse(f"/signin?done={done}", status_code=303)


@router.get("/join/{token}")
async def join_form(request: Request, token: str) -> Response:
    return await run_in_threadpool(_link_page, request, LinkKind.INVITE, token)


@router.post("/join/{token}")
async def join(request: Request, token: str) -> Response:
    return await _use(request, LinkKind.INVITE, token)


@router.get("/reset/{token}")
async def reset_form(request: Request, token: str) -> Response:
    return await run_in_threadpool(_link_page, request, LinkKind.RESET, token)


@router.post("/reset/{token}")
async def reset(request: Request, token: str) -> Response:
    return await _use(request, LinkKind.RESET, token)
