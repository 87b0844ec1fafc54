"""Member sign-in and sign-out: ``GET/POST /signin``, ``POST /signout`` (server-rendered)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import AuthenticationError, RateLimited
from keyplane.services.sessions import ChooseWorkspace, SecondFactorNeeded, SignedIn
from keyplane.web import pages
from keyplane.web.errors import ratelimit_headers

router = APIRouter(include_in_schema=False)
MAX_FORM_FIELDS = 20


def _finish(request: Request, response: Response, cookies: list[tuple[str, str]]) -> Response:
    for name, value in cookies:
        pages.set_cookie(request, response, name, value, max_age=None)
    return response


NOTICES = {
    "joined": "Welcome! Your account is ready: sign in with your email and new password.",
    "reset": "Your password is changed and your other sessions are signed out. Sign in with "
             "your new password.",
}


def _signin_page(request: Request, *, next_path: str, email: str = "", error: str = "",
                 status: int = 200, headers: dict[str, str] | None = None) -> Response:
    cookies: list[tuple[str, str]] = []
    binding = pages.csrf_binding(request, None, None, cookies)
    env = pages.env_of(request)
    response = pages.render(request, "signin.html", {
        "csrf_token": env.sessions.csrf_token(binding), "next": next_path, "email": email,
        "error": error, "notice": NOTICES.get(request.query_params.get("done", ""), ""),
    }, status=status)
    response.headers.update(headers or {})
    return _finish(request, response, cookies)


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    next_path = pages.safe_next(request.query_params.get("next"), default="")
    account = await run_in_threadpool(
        pages.env_of(request).accounts.resolve, request.cookies.get(pages.session_cookie(request)))
    if account is not None:  # operator staff or a partner developer: their own console
        return RedirectResponse("/operator" if account.is_operator else "/partners",
                                status_code=303)
    raw, signed_in = await run_in_threadpool(pages.current_session, request)
    if signed_in is not None:
        if next_path:
            return RedirectResponse(next_path, status_code=303)
        env = pages.env_of(request)
        assert raw is not None
        return pages.render(request, "signed_in.html", {
            "member": signed_in.principal, "tenant": signed_in.tenant,
            "role": signed_in.principal.role.value.replace("_", " "),
            "csrf_token": env.sessions.csrf_token(raw),
        })
    return _signin_page(request, next_path=next_path)


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    values: dict[str, Any] = {k: form.get(k) for k in ("email", "password", "csrf_token", "next")}
    next_path = pages.safe_next(values["next"], default="")
    email = values["email"] if isinstance(values["email"], str) else ""
    env = pages.env_of(request)
    binding = request.cookies.get(pages.csrf_cookie(request))
    if not env.sessions.csrf_ok(binding, values["csrf_token"]):
        return _signin_page(request, next_path=next_path, email=email, status=400,
                            error="This form has expired. Please sign in again.")
    assert binding is not None  # csrf_ok refuses a missing binding
    try:
        # operator staff and partner developers first (services/accounts.py), then members
        opened = await run_in_threadpool(
            env.accounts.sign_in, values["email"], values["password"],
            ip=pages.client_ip(request), request_id=request.scope.get("keyplane.request_id"))
        if opened is not None:
            home = "/operator" if opened[1].is_operator else "/partners"
            return _signed_in(request, opened[0], next_path if next_path.startswith(
                home) else home)
        outcome = await run_in_threadpool(
            env.sessions.sign_in, values["email"], values["password"],
            ip=pages.client_ip(request), request_id=request.scope.get("keyplane.request_id"),
            user_agent=request.headers.get("user-agent"), binding=binding)
    except RateLimited as exc:
        return _signin_page(request, next_path=next_path, email=email, status=429,
                            error="Too many failed sign-ins. Wait a few minutes and try again.",
                            headers=ratelimit_headers(exc.retry_after, exc.limit,
                                                      exc.remaining))
    except AuthenticationError as exc:
        return _signin_page(request, next_path=next_path, email=email, status=401,
                            error=_sentence(exc.message))
    if isinstance(outcome, ChooseWorkspace):
        page = pages.render(request, "choose_workspace.html", {
            "csrf_token": env.sessions.csrf_token(binding), "next": next_path,
            "choice": outcome.token, "workspaces": outcome.workspaces,
        })
        page.headers["Cache-Control"] = "no-store"  # it holds a short-lived sign-in proof
        return page
    return _admitted(request, outcome, binding, next_path)


def _admitted(request: Request, outcome: tuple[str, SignedIn] | SecondFactorNeeded,
              binding: str, next_path: str) -> Response:
    if isinstance(outcome, SecondFactorNeeded):
        return _code_page(request, outcome.token, outcome.tenant_name, binding, next_path)
    return _signed_in(request, outcome[0], next_path)


def _code_page(request: Request, token: str, tenant_name: str, binding: str, next_path: str,
               *, error: str = "", status: int = 200,
               headers: dict[str, str] | None = None) -> Response:
    env = pages.env_of(request)
    page = pages.render(request, "signin_code.html", {
        "csrf_token": env.sessions.csrf_token(binding), "next": next_path, "token": token,
        "tenant_name": tenant_name, "error": error,
    }, status=status)
    page.headers["Cache-Control"] = "no-store"  # it holds a short-lived sign-in proof
    page.headers.update(headers or {})
    return page


@router.post("/signin/code")
async def signin_code(request: Request) -> Response:
    """The second step when the member has two-factor on: a TOTP or recovery code. The
    session is created only now, with a new id (nothing from before the code is reused)."""
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    next_path = pages.safe_next(form.get("next"), default="")
    env = pages.env_of(request)
    binding = request.cookies.get(pages.csrf_cookie(request))
    if not env.sessions.csrf_ok(binding, form.get("csrf_token")):
        return _signin_page(request, next_path=next_path, status=400,
                            error="This form has expired. Please sign in again.")
    assert binding is not None
    token = form.get("token")
    token = token if isinstance(token, str) else ""
    shown_name = form.get("workspace")
    tenant_name = shown_name[:200] if isinstance(shown_name, str) else "your workspace"
    try:
        raw, _who = await run_in_threadpool(
            env.sessions.complete, token, form.get("code"), binding=binding,
            ip=pages.client_ip(request), request_id=request.scope.get("keyplane.request_id"),
            user_agent=request.headers.get("user-agent"))
    except RateLimited as exc:
        return _code_page(request, token, tenant_name, binding, next_path, status=429,
                          error="Too many wrong codes. Wait a few minutes and try again.",
                          headers=ratelimit_headers(exc.retry_after, exc.limit,
                                                    exc.remaining))
    except AuthenticationError as exc:
        if exc.field == "code":
            return _code_page(request, token, tenant_name, binding, next_path, status=401,
                              error=_sentence(exc.message))
        return _signin_page(request, next_path=next_path, status=401,
                            error=_sentence(exc.message))
    return _signed_in(request, raw, next_path)


@router.post("/signin/workspace")
async def choose_workspace(request: Request) -> Response:
    """The second step when one password opened several workspaces."""
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    next_path = pages.safe_next(form.get("next"), default="")
    env = pages.env_of(request)
    binding = request.cookies.get(pages.csrf_cookie(request))
    if not env.sessions.csrf_ok(binding, form.get("csrf_token")):
        return _signin_page(request, next_path=next_path, status=400,
                            error="This form has expired. Please sign in again.")
    assert binding is not None
    try:
        outcome = await run_in_threadpool(
            env.sessions.choose, form.get("choice"), form.get("principal_id"), binding=binding,
            ip=pages.client_ip(request), request_id=request.scope.get("keyplane.request_id"),
            user_agent=request.headers.get("user-agent"))
    except AuthenticationError as exc:
        return _signin_page(request, next_path=next_path, status=401,
                            error=_sentence(exc.message))
    return _admitted(request, outcome, binding, next_path)


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + "."


def _signed_in(request: Request, raw: str, next_path: str) -> Response:
    env = pages.env_of(request)
    response = RedirectResponse(next_path or "/", status_code=303)  # the console
    pages.set_cookie(request, response, pages.session_cookie(request), raw,
                     max_age=int(env.sessions.lifetime.total_seconds()))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    next_path = pages.safe_next(form.get("next"), default="")
    target = "/signin" + (f"?{urlencode({'next': next_path})}" if next_path else "")
    raw, signed_in = await run_in_threadpool(pages.current_session, request)
    env = pages.env_of(request)
    account = await run_in_threadpool(env.accounts.resolve, raw)
    if account is not None:
        if not env.sessions.csrf_ok(raw, form.get("csrf_token")):
            return pages.render(request, "message.html", {
                "title": "This form has expired", "message": "Reload the page and try again."},
                status=400)
        await run_in_threadpool(env.accounts.sign_out, account, ip=pages.client_ip(request))
        response = RedirectResponse(target, status_code=303)
        pages.clear_cookie(request, response, pages.session_cookie(request))
        return response
    if signed_in is None:
        return RedirectResponse(target, status_code=303)
    if not env.sessions.csrf_ok(raw, form.get("csrf_token")):
        return pages.render(request, "message.html", {
            "title": "This form has expired", "message": "Reload the page and try again."},
            status=400)
    await run_in_threadpool(env.sessions.sign_out, signed_in, ip=pages.client_ip(request),
                            user_agent=request.headers.get("user-agent"))
    response = RedirectResponse(target, status_code=303)
    pages.clear_cookie(request, response, pages.session_cookie(request))
    return response
