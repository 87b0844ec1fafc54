"""GET /metrics: Prometheus text exposition of this worker's figures (see keyplane/metrics.py).

Open to a loopback client that came through no proxy (``KEYPLANE_METRICS_OPEN_ON_LOOPBACK``,
default true: a scraper on the same host or a sidecar); every other client needs a credential
holding ``platform:read`` (an operator key). Not in /openapi.json: it is not part of the API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from keyplane.core.policy import parse_address
from keyplane.web.collector import registry_for
from keyplane.web.deps import caller, kp

router = APIRouter()


def _loopback_direct(request: Request) -> bool:
    """A loopback peer that forwards nobody: a proxy on the same host is not the client."""
    peer = parse_address(request.client.host.partition("%")[0] if request.client else None)
    if peer is None or not peer.is_loopback:
        return False
    return not any(name in request.headers for name in ("x-forwarded-for", "forwarded",
                                                        "x-real-ip"))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    keyplane = await kp(request)
    if not (keyplane.settings.metrics_open_on_loopback and _loopback_direct(request)):
        found = await caller(request, keyplane)
        found.require("platform:read")
    registry = request.app.state.metrics_registry
    if registry is None:
        registry = request.app.state.metrics_registry = registry_for(
            keyplane, request.app.state.metrics)
    body = await run_in_threadpool(generate_latest, registry)  # reads the webhook backlog
    return Response(body, media_type=CONTENT_TYPE_LATEST,
                    headers={"cache-control": "no-store"})
