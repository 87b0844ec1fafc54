"""Pure ASGI middleware: request ids, an access log without query strings, and refusal of
credentials sent in the URL (they end up in logs, histories and referrers)."""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane.web.errors import error_body

access_log = logging.getLogger("keyplane.access")
security_log = logging.getLogger("keyplane.security")

CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "access_token", "token",
                               "client_secret"})


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope["keyplane.request_id"] = request_id
        started = time.perf_counter()
        status = 500

        query = scope.get("query_string", b"").decode("latin-1")
        if query and any(k.lower() in CREDENTIAL_PARAMS for k, _ in parse_qsl(query)):
            security_log.warning("credential in query string refused path=%s request_id=%s",
                                 scope.get("path"), request_id)
            await _reject(send, request_id)
            _log(scope, 400, started, request_id)
            return

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _log(scope, status, started, request_id)


async def _reject(send: Send, request_id: str) -> None:
    body = json.dumps(error_body(
        "credential_in_url",
        "credentials must be sent in the Authorization header, never in the URL",
    )).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"application/json"), (b"x-request-id", request_id.encode()),
        (b"cache-control", b"no-store"),
    ]})
    await send({"type": "http.response.body", "body": body})


def _log(scope: Scope, status: int, started: float, request_id: str) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client: Any = scope.get("client") or ("-", 0)
    access_log.info(
        '%s "%s %s" %d %.1fms request_id=%s', client[0], scope.get("method"), scope.get("path"),
        status, (time.perf_counter() - started) * 1000, request_id,
    )
