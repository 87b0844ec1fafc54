"""The signed-in person's own two-factor sign-in: set it up with an authenticator app (the
secret and its otpauth:// URI), confirm with a first code, keep the recovery codes shown once,
and turn it off with a fresh code. Reachable before anything else when the tenant requires
admins to use two-factor."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import AuthenticationError, Conflict, RateLimited
from keyplane.services.sessions import requires_two_factor
from keyplane.services.two_factor import Enrolment, self_caller
from keyplane.web import pages
from keyplane.web.console.base import Console, action, page, sentence

router = APIRouter(include_in_schema=False)
PATH = "/account/two-factor"
NOTICES = {"off": "Two-factor sign-in is off. You sign in with your password only."}


def _page(c: Console, *, enrolment: Enrolment | None = None, codes: list[str] | None = None,
          error: str = "", status: int = 200) -> Response:
    tf = pages.env_of(c.request).two_factor
    signed = c.signed_in
    factor = tf.factor(signed.principal.id)
    on = factor is not None and factor.confirmed_at is not None
    if enrolment is None and not on and factor is not None:
        enrolment = tf.pending(signed.principal)
    return c.render("console/two_factor.html", {
        "on": on, "enrolment": enrolment, "codes": codes or [], "error": error,
        "required": requires_two_factor(signed.principal, signed.tenant),
        "must": signed.must_enrol, "nav": "account",
        "recovery_left": len(factor.recovery_digests) if on and factor else 0,
        "notice": NOTICES.get(c.request.query_params.get("done", ""), ""),
    }, status=status, title="Two-factor sign-in")


@router.get(PATH)
async def show(request: Request) -> Response:
    return await page(request, _page, enrolling=True)


@router.post(f"{PATH}/start")
async def start(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        tf = pages.env_of(c.request).two_factor
        try:
            enrolment = tf.start(self_caller(c.signed_in.principal, c.caller.ip),
                                 c.signed_in.principal)
        except Conflict:
            return RedirectResponse(PATH, status_code=303)
        return _page(c, enrolment=enrolment)

    return await action(request, view, enrolling=True)


@router.post(f"{PATH}/confirm")
async def confirm(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        env = pages.env_of(c.request)
        try:
            codes = env.two_factor.confirm(self_caller(c.signed_in.principal, c.caller.ip),
                                           c.signed_in.principal, form.get("code"))
        except RateLimited:
            return _page(c, error="Too many wrong codes. Wait a few minutes and try again.",
                         status=429)
        except AuthenticationError as exc:
            return _page(c, error=sentence(exc.message), status=422)
        except Conflict as exc:
            return _page(c, error=sentence(exc.message), status=409)
        env.sessions.mark_fresh(c.signed_in)  # the code just typed is a fresh second factor
        return _page(c, codes=codes)

    return await action(request, view, enrolling=True)


@router.post(f"{PATH}/disable")
async def disable(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        tf = pages.env_of(c.request).two_factor
        try:
            tf.disable(self_caller(c.signed_in.principal, c.caller.ip), c.signed_in.principal,
                       c.signed_in.tenant, form.get("code"))
        except RateLimited:
            return _page(c, error="Too many wrong codes. Wait a few minutes and try again.",
                         status=429)
        except (AuthenticationError, Conflict) as exc:
            return _page(c, error=sentence(exc.message),
                         status=409 if isinstance(exc, Conflict) else 422)
        return RedirectResponse(f"{PATH}?done=off", status_code=303)

    return await action(request, view, enrolling=True)
