"""What every console page shares: the signed-in person as a session caller, CSRF, rendering
with the console's security headers, and error pages.

The console acts only through the services, with the member's own rights (a ``session``
caller); it never mints a key for itself and never commits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import (
    Conflict,
    KeyplaneError,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RateLimited,
)
from keyplane.core.rights import Caller
from keyplane.services.sessions import SignedIn
from keyplane.web import pages
from keyplane.web.console.present import scope_label

_LACKS = re.compile(r"\Athis credential lacks the ([a-z0-9_:-]+) scope\Z")
MAX_FORM_FIELDS = 200  # the scope grid sends one field per ticked box
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

T = TypeVar("T")


@dataclass(frozen=True)
class Console:
    """One request of a signed-in person."""

    request: Request
    kp: Keyplane
    raw_session: str
    signed_in: SignedIn
    caller: Caller

    @property
    def tenant_id(self) -> str:
        return self.signed_in.tenant.id

    @property
    def csrf_token(self) -> str:
        return pages.env_of(self.request).sessions.csrf_token(self.raw_session)

    def csrf_ok(self, form: FormData) -> bool:
        return pages.env_of(self.request).sessions.csrf_ok(self.raw_session,
                                                           form.get("csrf_token"))

    def can(self, permission: str) -> bool:
        return self.caller.holds(permission)

    @property
    def cursor(self) -> str | None:
        """The paging cursor in the URL (at most 64 characters, as the API takes it)."""
        return (self.request.query_params.get("cursor") or "")[:64] or None

    def render(self, template: str, context: dict[str, Any], *, status: int = 200,
               title: str) -> HTMLResponse:
        return render(self.request, template, {
            **context, "title": title, "tenant": self.signed_in.tenant,
            "member": self.signed_in.principal, "csrf_token": self.csrf_token,
            "nav": context.get("nav", "keys"),
        }, status=status)

    def error(self, status: int, heading: str, message: str) -> HTMLResponse:
        return self.render("console/error.html", {"heading": heading, "message": message},
                           status=status, title=heading)


def render(request: Request, template: str, context: dict[str, Any], *,
           status: int = 200) -> HTMLResponse:
    """A console page: scripts and styles from this origin only, never cached (pages hold
    tenant data, and one of them a secret)."""
    response = pages.render(request, template, context, status=status)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def signin_redirect(request: Request) -> Response:
    account = pages.env_of(request).accounts.resolve(
        request.cookies.get(pages.session_cookie(request)))
    if account is not None:  # operator staff and partner developers: their own pages only
        if request.url.path == "/":
            return RedirectResponse("/operator" if account.is_operator else "/partners",
                                    status_code=303)
        return pages.render(request, "message.html", {
            "title": "Not found", "message": "There is nothing here."}, status=404)
    target = "/"  # a form posted after the session ended: start again from the console
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/signin?" + urlencode({"next": pages.safe_next(target, "/")}),
                            status_code=303)


def open_console(request: Request) -> Console | None:
    """The signed-in person behind the request, or None (runs in a worker thread)."""
    raw, signed_in = pages.current_session(request)
    if signed_in is None or raw is None:
        return None
    env = pages.env_of(request)
    caller = env.sessions.caller(signed_in, ip=pages.client_ip(request),
                                 request_id=request.scope.get("keyplane.request_id"),
                                 user_agent=request.headers.get("user-agent"))
    return Console(request=request, kp=pages.keyplane_of(request), raw_session=raw,
                   signed_in=signed_in, caller=caller)


def refused(c: Console, exc: KeyplaneError) -> HTMLResponse:
    """A plain page for a refusal no form field can show."""
    if isinstance(exc, NotFound):
        return c.error(404, "Not found", "There is nothing here, or it is not in "
                       f"{c.signed_in.tenant.name}. It may have been deleted.")
    if isinstance(exc, PermissionDenied):
        lacking = _LACKS.match(exc.message)
        reason = (f"Your role does not include “{scope_label(lacking.group(1))}”."
                  if lacking else sentence(exc.message.replace("this credential", "you")))
        return c.error(403, "You cannot do this", f"{reason} Nothing was changed. Ask an "
                       f"administrator of {c.signed_in.tenant.name} if you need this done.")
    if isinstance(exc, PreconditionFailed):
        return c.error(409, "Someone changed this first",
                       "The key changed since you opened the page (another rotation or edit "
                       "came first). Open it again, check it, and decide.")
    if isinstance(exc, RateLimited):
        return c.error(429, "Too many requests", "Wait a moment and try again.")
    if isinstance(exc, Conflict):
        return c.error(409, "This cannot be done now", sentence(exc.message))
    return c.error(400, "This cannot be done", sentence(exc.message))


def sentence(message: str) -> str:
    text = message.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


async def read_form(request: Request) -> FormData:
    return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)


ENROL = "/account/two-factor"


def enrol_first(c: Console) -> Response | None:
    """An admin whose tenant requires two-factor and who has none sets it up before anything
    else (the sessions service says who must)."""
    if c.signed_in.must_enrol:
        return RedirectResponse(f"{ENROL}?required=1", status_code=303)
    return None


async def page(request: Request, view: Callable[[Console], Response], *,
               enrolling: bool = False) -> Response:
    """Run ``view`` for the signed-in person in a worker thread; signed-out visitors go to the
    sign-in page, admins who must enrol two-factor go to do that (unless ``enrolling``), and
    refusals become plain error pages."""
    def run() -> Response:
        c = open_console(request)
        if c is None:
            return signin_redirect(request)
        if not enrolling and (first := enrol_first(c)) is not None:
            return first
        try:
            return view(c)
        except KeyplaneError as exc:
            return refused(c, exc)

    return await run_in_threadpool(run)


async def action(request: Request, view: Callable[[Console, FormData], Response], *,
                 enrolling: bool = False) -> Response:
    """A form POST: as ``page``, after checking the form's CSRF token."""
    form = await read_form(request)

    def run() -> Response:
        c = open_console(request)
        if c is None:
            return signin_redirect(request)
        if not enrolling and (first := enrol_first(c)) is not None:
            return first
        if not c.csrf_ok(form):
            return c.error(400, "This form has expired",
                           "Reload the page and try again. Nothing was changed.")
        try:
            return view(c, form)
        except KeyplaneError as exc:
            return refused(c, exc)

    return await run_in_threadpool(run)
