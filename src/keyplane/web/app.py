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
from keyplane.core.policy import parse_networks
from keyplane.web import (
    errors,
    routes_admin,
    routes_changes,
    routes_keys,
    routes_usage,
    routes_verify,
    routes_webhooks,
)
from keyplane.web.fastverify import VerifyFastPath
from keyplane.web.middleware import RequestContext

DESCRIPTION = """Keyplane's API: keys, tenants, members, service accounts, groups, scopes,
verification and the audit log. Authenticate with `Authorization: Bearer <key>`."""


class KeyplaneAPI(FastAPI):
    """FastAPI with Keyplane's pure-ASGI layers in front of all of it, FastAPI's own
    per-request telemetry checks included: the verify fast path first, which answers cache hits
    itself (with a request id and an access-log line), then request ids and the access log
    around everything else (500s included)."""

    _front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self._front
        if front is None:
            front = self._front = VerifyFastPath(RequestContext(super().__call__),
                                                 self.state.keyplane)
        await front(scope, receive, send)


def create_app(kp: Keyplane, *, manage_lifecycle: bool = True) -> FastAPI:
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

    app = KeyplaneAPI(title="Keyplane", version=__version__, description=DESCRIPTION,
                      lifespan=lifespan)
    app.state.keyplane = kp
    app.state.trusted_proxies = parse_networks(kp.settings.trusted_proxies, "trusted_proxies")
    errors.install(app)
    app.include_router(routes_verify.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_usage.router)
    app.include_router(routes_changes.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_webhooks.router)
    from keyplane.web import routes_apps, routes_oauth, routes_session  # connected apps

    app.include_router(routes_apps.router)
    app.include_router(routes_oauth.router)
    app.include_router(routes_session.router)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database answers")
    def readyz() -> JSONResponse:
        try:
            with kp.ctx.uow(readonly=True) as uow:
                uow.changes.head()
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        # invalidation: "redis", "degraded" (Redis lost: polling, short cache) or "polling"
        return JSONResponse({"status": "ok", "invalidation": kp.propagation.mode})

    return app
