"""The ASGI application: ``create_app(keyplane)``. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from keyplane import __version__
from keyplane.bootstrap import Keyplane
from keyplane.core import scopes as sc
from keyplane.core.policy import parse_networks
from keyplane.core.webhooks import url_pattern
from keyplane.logs import install_redaction
from keyplane.metrics import RequestMetrics
from keyplane.web import (
    contract,
    errors,
    forwardauth,
    refusals,
    routes_admin,
    routes_changes,
    routes_events,
    routes_keys,
    routes_leaks,
    routes_metrics,
    routes_reports,
    routes_shares,
    routes_usage,
    routes_verify,
    routes_webhooks,
)
from keyplane.web.credentials import legacy_names
from keyplane.web.fastverify import VerifyFastPath
from keyplane.web.forwardauth import ForwardAuth, load_route_map
from keyplane.web.limits import JsonDepthLimit, RequestLimits
from keyplane.web.methods import AllowedMethods
from keyplane.web.middleware import RequestContext

DESCRIPTION = """Keyplane's API: keys, tenants, members, service accounts, groups, scopes,
verification and the audit log. Authenticate with `Authorization: Bearer <key>` (or
`Bearer <name>:<key>`), or `X-API-Key: <key>`, or a header named in KEYPLANE_LEGACY_HEADERS."""


class KeyplaneAPI(FastAPI):
    """FastAPI with Keyplane's pure-ASGI layers in front of all of it, FastAPI's own
    per-request telemetry checks included: the limits on what a request may make a worker hold
    (head and body size) first, then /v1/forward-auth
    (web/forwardauth.py), then the verify fast path, which answers cache hits itself
    (with a request id and an access-log line), then request ids and the access log around
    everything else (500s included), ``Allow`` for OPTIONS and 405 answers, and the JSON
    nesting limit in front of the routes."""

    _front: ASGIApp | None = None
    _metrics: RequestMetrics | None = None
    _limits: RequestLimits | None = None
    _fast: VerifyFastPath | None = None
    fast_verify = True  # False: every /v1/verify reaches the route (the differential test)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["keyplane.metrics"] = self._metrics  # where log_request counts the duration
        front = self._front
        if front is None:
            kp = self.state.keyplane
            scope["keyplane.metrics"] = self._metrics = self.state.metrics
            inner: ASGIApp = RequestContext(AllowedMethods(
                JsonDepthLimit(super().__call__), self.router.routes))
            if self.fast_verify:
                inner = self._fast = VerifyFastPath(inner, kp, self.state.metrics)
            front = self._front = self._limits = RequestLimits(
                ForwardAuth(inner, kp, self.state.route_map), kp.settings.max_body_bytes)
        await front(scope, receive, send)

    def answer_inline(self, scope: dict[str, Any],
                      body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """The answer to a whole ``POST /v1/verify`` request if the verify fast path
        remembers it, for a server that answers it without an ASGI cycle and has held its
        head to ``RequestLimits``' head limits (``keyplane.web.server``); else None, and the
        request takes the usual way.
        Nothing is answered here before the first request has built the layers."""
        fast, limits = self._fast, self._limits
        if fast is None or limits is None or len(body) > limits.max_body:
            return None  # the protocol held the head to the limits
        return fast.answer_inline(scope, body)


def create_app(kp: Keyplane, *, manage_lifecycle: bool = True,
               fast_verify: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            kp.start()
        undo_signals = routes_changes.end_streams_on_signal(kp.feed)  # streams end on SIGTERM
        try:
            yield
        finally:
            undo_signals()
            if manage_lifecycle:
                kp.stop()

    install_redaction()  # no log record of this process holds a credential-shaped string
    app = KeyplaneAPI(title="Keyplane", version=__version__, description=DESCRIPTION,
                      lifespan=lifespan)
    app.fast_verify = fast_verify
    app.state.keyplane = kp
    app.state.metrics = RequestMetrics()
    app.state.metrics_registry = None  # built on the first scrape
    app.state.trusted_proxies = parse_networks(kp.settings.trusted_proxies, "trusted_proxies")
    app.state.legacy_headers = legacy_names(kp.settings.legacy_headers)
    # read once, at start: a bad file or an unknown scope stops the server here
    app.state.route_map = load_route_map(kp.settings.route_map,
                                         frozenset(kp.ctx.catalogue().entries))
    errors.install(app)
    refusals.install(app)  # 403s and 404s of authenticated /v1 calls are audited
    app.include_router(routes_verify.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_usage.router)
    app.include_router(routes_reports.router)
    app.include_router(routes_changes.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_leaks.router)
    app.include_router(routes_shares.router)
    app.include_router(routes_webhooks.router)
    app.include_router(routes_events.router)
    app.include_router(routes_metrics.router)
    from keyplane.web import routes_account, routes_apps, routes_oauth, routes_session

    app.include_router(routes_apps.router)
    app.include_router(routes_oauth.router)
    app.include_router(routes_session.router)
    app.include_router(routes_account.router)  # forgot password, invitations, reset links
    from keyplane.web import console  # the server-rendered console at /

    console.install(app)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database answers")
    def readyz() -> JSONResponse:
        try:
            with kp.ctx.uow(readonly=True) as uow:
                uow.changes.head()
        except Exception:
            # during a database outage's grace this worker still verifies from its cache: it
            # stays in the load balancer's rotation until the grace ends
            if kp.ctx.health is not None and kp.ctx.health.down and kp.verifier.cache_trusted():
                return JSONResponse({"status": "degraded", "database": "unreachable",
                                     "invalidation": kp.propagation.mode,
                                     "ratelimit": kp.limits.mode})
            return JSONResponse({"status": "unavailable"}, status_code=503)
        # invalidation: "redis", "degraded" (Redis lost: polling, short cache) or "polling";
        # ratelimit: "redis" (counts shared by every worker) or "memory" (each worker's own)
        return JSONResponse({"status": "ok", "invalidation": kp.propagation.mode,
                             "ratelimit": kp.limits.mode})

    def scopes() -> contract.Scopes:
        catalogue = kp.ctx.catalogue()
        return {"tenant": tuple(sorted(s for s in catalogue.entries
                                       if s not in sc.PLATFORM_SCOPES)),
                "data": tuple(sorted(catalogue.data_scopes())),
                "operator": tuple(sorted(sc.OPERATOR_KEY_SCOPES & set(catalogue.entries)))}

    generate = app.openapi

    def with_forward_auth() -> dict[str, Any]:  # served in front of the router (see above)
        schema = generate()
        schema["paths"][forwardauth.PATH] = forwardauth.path_item()
        return schema

    app.openapi = with_forward_auth  # type: ignore[method-assign]  # as FastAPI documents
    contract.install(app, scopes, webhook_url=url_pattern(
        allow_http=kp.settings.webhook_allow_private_targets))
    return app
