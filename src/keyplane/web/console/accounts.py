"""What the operator's and the partner developers' pages share: the signed-in console account
as a caller, CSRF, rendering and refusals.

Operator staff see the operator pages only, a partner developer its own pages only, and a
tenant member neither: any other visitor who is signed in gets "Not found". The pages act only
through the services, with the account's own caller (operator staff: the operator's rights; a
developer: none beyond its own apps), and never commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keyplane.bootstrap import Keyplane
from keyplane.core.accounts import AccountKind
from keyplane.core.errors import (
    Conflict,
    KeyplaneError,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from keyplane.core.rights import Caller
from keyplane.services.accounts import AccountSignedIn
from keyplane.web import pages
from keyplane.web.console.base import read_form, render, sentence

HOMES = {AccountKind.OPERATOR: "/operator", AccountKind.DEVELOPER: "/partners"}


def home_of(signed_in: AccountSignedIn) -> str:
    return HOMES[signed_in.account.kind]


@dataclass(frozen=True)
class AccountConsole:
    """One request of signed-in operator staff or a partner developer."""

    request: Request
    kp: Keyplane
    raw_session: str
    signed_in: AccountSignedIn
    caller: Caller

    @property
    def csrf_token(self) -> str:
        return pages.env_of(self.request).sessions.csrf_token(self.raw_session)

    def csrf_ok(self, form: FormData) -> bool:
        return pages.env_of(self.request).sessions.csrf_ok(self.raw_session,
                                                           form.get("csrf_token"))

    @property
    def cursor(self) -> str | None:
        return (self.request.query_params.get("cursor") or "")[:64] or None

    def render(self, template: str, context: dict[str, Any], *, status: int = 200,
               title: str) -> HTMLResponse:
        account = self.signed_in.account
        return render(self.request, template, {
            **context, "title": title, "account": account,
            "is_operator": self.signed_in.is_operator, "csrf_token": self.csrf_token,
            "nav": context.get("nav", ""),
        }, status=status)

    def error(self, status: int, heading: str, message: str) -> HTMLResponse:
        return self.render("console/account_error.html",
                           {"heading": heading, "message": message}, status=status,
                           title=heading)


def current_account(request: Request) -> tuple[str | None, AccountSignedIn | None]:
    raw = request.cookies.get(pages.session_cookie(request))
    return raw, pages.env_of(request).accounts.resolve(raw) if raw else None


def open_account(request: Request) -> AccountConsole | None:
    raw, signed_in = current_account(request)
    if signed_in is None or raw is None:
        return None
    caller = pages.env_of(request).accounts.caller(
        signed_in, ip=pages.client_ip(request),
        request_id=request.scope.get("keyplane.request_id"))
    return AccountConsole(request=request, kp=pages.keyplane_of(request), raw_session=raw,
                          signed_in=signed_in, caller=caller)


def _not_yours(request: Request) -> Response:
    """A page of another kind of account: it does not exist for this visitor."""
    return pages.render(request, "message.html", {
        "title": "Not found", "message": "There is nothing here."}, status=404)


def _signin(request: Request) -> Response:
    target = "/"
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/signin?" + urlencode({"next": pages.safe_next(target, "/")}),
                            status_code=303)


def _refused(c: AccountConsole, exc: KeyplaneError) -> HTMLResponse:
    if isinstance(exc, NotFound):
        return c.error(404, "Not found", "There is nothing here. It may have been removed.")
    if isinstance(exc, PermissionDenied):
        return c.error(403, "You cannot do this",
                       sentence(exc.message.replace("this credential", "your account"))
                       + " Nothing was changed.")
    if isinstance(exc, RateLimited):
        return c.error(429, "Too many requests", "Wait a moment and try again.")
    if isinstance(exc, Conflict):
        return c.error(409, "This cannot be done now", sentence(exc.message))
    return c.error(400, "This cannot be done", sentence(exc.message))


def _visitor(request: Request, kind: AccountKind) -> AccountConsole | Response:
    c = open_account(request)
    if c is None:
        member = pages.current_session(request)[1]
        return _not_yours(request) if member is not None else _signin(request)
    if c.signed_in.account.kind is not kind:
        return _not_yours(request)
    return c


async def account_page(request: Request, kind: AccountKind,
                       view: Callable[[AccountConsole], Response]) -> Response:
    """Run ``view`` for a signed-in account of ``kind``; everyone else is refused."""
    def run() -> Response:
        c = _visitor(request, kind)
        if not isinstance(c, AccountConsole):
            return c
        try:
            return view(c)
        except KeyplaneError as exc:
            return _refused(c, exc)

    return await run_in_threadpool(run)


async def account_action(request: Request, kind: AccountKind,
                         view: Callable[[AccountConsole, FormData], Response]) -> Response:
    """A form POST: as ``account_page``, after checking the form's CSRF token."""
    form = await read_form(request)

    def run() -> Response:
        c = _visitor(request, kind)
        if not isinstance(c, AccountConsole):
            return c
        if not c.csrf_ok(form):
            return c.error(400, "This form has expired",
                           "Reload the page and try again. Nothing was changed.")
        try:
            return view(c, form)
        except KeyplaneError as exc:
            return _refused(c, exc)

    return await run_in_threadpool(run)


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""
