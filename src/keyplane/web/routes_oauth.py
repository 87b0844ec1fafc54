"""OAuth 2.0 endpoints: /oauth/authorize (consent), /oauth/token, /oauth/revoke,
/oauth/introspect and the RFC 8414 metadata document.

The authorization request is validated (client, exact redirect URI, PKCE, scopes) before
anything else: an unknown client or a redirect URI that does not match gets an error page and
never a redirect. Only then does the member sign in; only a tenant admin sees the consent page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InsecureTransportError, OAuth2Error
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from keyplane.core.apps import App, scope_list
from keyplane.core.model import Role
from keyplane.oauth.adapter import BodyTooLarge, Result, StarletteOAuth2Request, read_request
from keyplane.oauth.adapter import to_response as authlib_response
from keyplane.oauth.metadata import (
    AUTHORIZE_PATH,
    INTROSPECT_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    WELL_KNOWN_PATH,
    metadata,
)
from keyplane.oauth.server import AuthorizationServer, run
from keyplane.services.consent import Member, Refusal, check_decision
from keyplane.services.throttle import OAUTH_FAILURES, oauth_guess
from keyplane.web import contract, fresh, net, pages
from keyplane.web.errors import ratelimit_headers

router = APIRouter(tags=["oauth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _error_page(request: Request, error: str, description: str, status: int = 400) -> Response:
    return pages.render(request, "oauth_error.html",
                        {"error": error, "description": description}, status=status)


def _with_issuer(result: Result, issuer: str) -> Result:
    """RFC 9207: every authorization response that goes back to the client names the issuer."""
    location = result.location
    if location and "iss=" not in (urlsplit(location).query or ""):
        result.location = add_params_to_uri(location, [("iss", issuer)])
    return result


@dataclass
class Page:
    """What the sync part of /authorize decided; rendered on the event loop."""

    kind: str  # "error", "redirect", "signin", "not_admin", "consent"
    context: dict[str, Any]
    status: int = 200
    result: Result | None = None


def _authorize(request: Request, oreq: StarletteOAuth2Request) -> Page:
    env = pages.env_of(request)
    ip = pages.client_ip(request)
    rid = request.scope.get("keyplane.request_id")

    # 1. the request itself: client, redirect URI, response type, PKCE, scopes
    def validate(srv: AuthorizationServer) -> tuple[App, list[str]]:
        grant = srv.get_consent_grant(oreq, end_user=None)
        return grant.request.client.app, scope_list(grant.request.scope)

    try:
        app, requested = run(env, validate, readonly=True, ip=ip, request_id=rid)
    except OAuth2Error as err:
        if err.redirect_uri:  # validated redirect URI: tell the client (RFC 6749 4.1.2.1)
            return Page("redirect", {}, result=_with_issuer(Result(*err()), env.issuer))
        return Page("error", {"error": err.error,
                              "description": err.get_error_description() or ""}, 400)

    # 2. who is asking
    raw, signed_in = pages.current_session(request)
    if signed_in is None:
        return Page("signin", {"next": f"{request.url.path}?{request.url.query}"})
    context: dict[str, Any] = {
        "app": app, "tenant": signed_in.tenant, "member": signed_in.principal,
        "role": signed_in.principal.role.value.replace("_", " "),
        "csrf_token": env.sessions.csrf_token(raw or ""),
        "next": f"{request.url.path}?{request.url.query}",
    }
    if signed_in.principal.role is not Role.ADMIN:
        return Page("not_admin", context, 403)
    if signed_in.must_enrol:  # the tenant requires admins to use two-factor: enrol first
        return Page("enrol", {})

    offer = env.connections.consent_offer(signed_in.principal, requested)
    context.update(
        scopes=[{"name": s.name, "description": s.description, "holdable": s.holdable}
                for s in offer.scopes],
        action=f"{AUTHORIZE_PATH}?{request.url.query}",
        redirect_uri=oreq.payload.redirect_uri,
        redirect_host=urlsplit(oreq.payload.redirect_uri).netloc,
        access_minutes=offer.access_minutes, grant_days=offer.grant_days,
        error="", code_error="", ask_code=fresh.needs_code(env, signed_in),
    )
    if oreq.method != "POST":
        return Page("consent", context)

    # 3. the admin's decision
    if not env.sessions.csrf_ok(raw, oreq.form.get("csrf_token")):
        return Page("error", {"error": "invalid_request",
                              "description": "This form has expired; start again from the app."},
                    400)
    decision = oreq.form.get("decision")
    chosen = [v for k, v in oreq.form_items if k == "scope"]
    refusal = check_decision(offer, decision, chosen)
    if refusal is Refusal.TAMPERED:
        return Page("error", {"error": "invalid_request",
                              "description": "The consent form was tampered with."}, 400)
    if refusal is Refusal.NOTHING_CHOSEN:
        context["error"] = "Choose at least one permission, or deny the request."
        return Page("consent", context, 400)
    if decision == "allow":  # a fresh second factor, when the admin has one
        context["code_error"] = fresh.refused(env, signed_in, oreq.form.get(fresh.FIELD))
        if context["code_error"]:
            return Page("consent", context, 401)
    member = Member(principal=signed_in.principal, tenant=signed_in.tenant)

    def decide(srv: AuthorizationServer) -> Result:
        grant = srv.get_consent_grant(oreq, end_user=member)
        oreq.granted_scopes = chosen
        if decision == "deny":
            srv.steps.denied(srv.step, member, grant.request.client.app, requested)
        result: Result = srv.create_authorization_response(
            oreq, grant_user=member if decision == "allow" else None, grant=grant)
        return result

    try:
        result = run(env, decide, ip=ip, request_id=rid,
                     user_agent=request.headers.get("user-agent"),
                     session_id=signed_in.session.id)
    except OAuth2Error as err:  # the request changed under us (e.g. the app was suspended)
        return Page("error", {"error": err.error,
                              "description": err.get_error_description() or ""}, 400)
    return Page("redirect", {}, result=_with_issuer(result, env.issuer))


@router.api_route(AUTHORIZE_PATH, methods=["GET", "POST"], include_in_schema=False)
async def authorize(request: Request) -> Response:
    try:
        oreq = await read_request(request, secure=pages.is_tls(request), params="query")
    except InsecureTransportError:
        return _error_page(request, "insecure_transport", "OAuth requires https.")
    except BodyTooLarge:
        return _error_page(request, "invalid_request", "The form is too large.", 413)
    page = await run_in_threadpool(_authorize, request, oreq)
    if page.kind == "redirect":
        assert page.result is not None
        return authlib_response(page.result)
    if page.kind == "signin":
        return RedirectResponse("/signin?" + urlencode({"next": page.context["next"]}),
                                status_code=303)
    if page.kind == "enrol":
        return RedirectResponse("/account/two-factor?required=1", status_code=303)
    if page.kind == "error":
        return _error_page(request, page.context["error"], page.context["description"],
                           page.status)
    template = "not_admin.html" if page.kind == "not_admin" else "consent.html"
    targets = (pages.origin(page.context["redirect_uri"]),) if page.kind == "consent" else ()
    return pages.render(request, template, page.context, status=page.status,
                        form_targets=targets)


async def _endpoint(request: Request,
                    action: Callable[[AuthorizationServer, StarletteOAuth2Request], Result]
                    ) -> Response:
    """A client-authenticated endpoint: token, revocation, introspection."""
    try:
        oreq = await read_request(request, secure=pages.is_tls(request), params="form")
    except InsecureTransportError:
        return JSONResponse({"error": "invalid_request",
                             "error_description": "OAuth requires https."}, 400,
                            headers=NO_STORE)
    except BodyTooLarge:
        return JSONResponse({"error": "invalid_request",
                             "error_description": "The request is too large."}, 413,
                            headers=NO_STORE)
    kp = pages.keyplane_of(request)
    ip = net.client_address(request, request.app.state.trusted_proxies)
    request_id = request.scope.get("keyplane.request_id")
    wait = kp.throttle.retry_after(OAUTH_FAILURES, ip)
    if wait is not None:
        return _slow_down(wait, kp.throttle.limit)
    result = await run_in_threadpool(
        run, pages.env_of(request), lambda srv: action(srv, oreq),
        ip=str(ip) if ip else None, request_id=request_id,
        user_agent=request.headers.get("user-agent"))
    response = authlib_response(result)
    response.headers.update(NO_STORE)
    error = result.body.get("error") if isinstance(result.body, dict) else None
    if oauth_guess(result.status, error):
        wait = await run_in_threadpool(kp.throttle.failed, OAUTH_FAILURES, ip,
                                       request_id=request_id)
        if wait is not None:
            return _slow_down(wait, kp.throttle.limit)
    return response


def _slow_down(retry_after: int, limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": "slow_down", "error_description": "too many failed attempts from this "
         "address; try again later"}, 429,
        headers={**NO_STORE, **ratelimit_headers(retry_after, limit)})


@router.post(TOKEN_PATH, summary="Token endpoint (RFC 6749): authorization_code, refresh_token",
             response_class=Response, responses=contract.oauth_errors())
async def token(request: Request) -> Response:
    return await _endpoint(request, lambda srv, oreq: srv.create_token_response(oreq))


@router.post(REVOKE_PATH, summary="Token revocation (RFC 7009)", response_class=Response,
             responses=contract.oauth_errors())
async def revoke(request: Request) -> Response:
    return await _endpoint(request,
                           lambda srv, oreq: srv.create_endpoint_response("revocation", oreq))


@router.post(INTROSPECT_PATH, summary="Token introspection (RFC 7662)", response_class=Response,
             responses=contract.oauth_errors())
async def introspect(request: Request) -> Response:
    return await _endpoint(request,
                           lambda srv, oreq: srv.create_endpoint_response("introspection", oreq))


@router.get(WELL_KNOWN_PATH, summary="Authorization server metadata (RFC 8414)")
def well_known(request: Request) -> dict[str, Any]:
    kp = pages.keyplane_of(request)
    return metadata(pages.env_of(request).issuer, kp.ctx.catalogue())
