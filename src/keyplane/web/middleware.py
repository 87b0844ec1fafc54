"""Pure ASGI middleware: request ids, an access log without query strings and with
credential-shaped strings in the path redacted, and refusal of credentials sent in the URL's
query (they end up in logs, histories and referrers)."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane import logs
from keyplane.core.tokens import redact_secrets
from keyplane.logs import ACCESS_FORMAT, request_id_var
from keyplane.metrics import UNMATCHED, observe
from keyplane.web.errors import error_body

access_log = logging.getLogger("keyplane.access")
security_log = logging.getLogger("keyplane.security")

CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "access_token", "token",
                               "client_secret"})


def new_request_id() -> str:
    """16 hex digits naming one request in logs and audit events. Not a secret (it is sent
    back in ``X-Request-ID``), so it comes from ``random``, which is reseeded in every forked
    worker and costs a fraction of an ``os.urandom`` call on the hot path."""
    return f"{random.getrandbits(64):016x}"


def response_headers(request_id: str) -> list[tuple[bytes, bytes]]:
    """The headers every answer carries (the fast path sends them itself)."""
    return [(b"x-request-id", request_id.encode()), (b"cache-control", b"no-store")]


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the verify fast path, in front of this layer, may have named the request already
        request_id = scope.get("keyplane.request_id") or new_request_id()
        scope["keyplane.request_id"] = request_id
        request_id_var.set(request_id)  # every log line of this request names it
        started = scope.get("keyplane.started") or time.perf_counter()
        status = 500

        query = scope.get("query_string", b"").decode("latin-1")
        if query and any(k.lower() in CREDENTIAL_PARAMS for k, _ in parse_qsl(query)):
            security_log.warning("credential in query string refused path=%s request_id=%s",
                                 _logged_path(scope), request_id)
            await _reject(send, request_id)
            log_request(scope, 400, started, request_id)
            return
        nul_in = _nul_in_url(scope.get("path", ""), query)
        if nul_in:  # PostgreSQL cannot even compare such text: refuse it here, naming where
            await _reject(send, request_id, "invalid_request",
                          f"{nul_in}: the URL must not contain NUL characters", nul_in)
            log_request(scope, 400, started, request_id)
            return

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                else:
                    headers += response_headers(request_id)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log_request(scope, status, started, request_id)


def _nul_in_url(path: str, query: str) -> str | None:
    """Where a NUL character hides in the URL: ``path``, a query parameter's name, or None."""
    if "\x00" in path:
        return "path"
    if "%00" in query:
        for k, v in parse_qsl(query, keep_blank_values=True):
            if "\x00" in k or "\x00" in v:
                return k if "\x00" not in k else "query"
    return None


_ONE_TIME_LINK = re.compile(r"\A/(join|reset)/[^/]*")  # invitation and password-reset tokens


def _logged_path(scope: Scope) -> str:
    """The request's path as logs may show it: secrets redacted (one-time link tokens too),
    control characters escaped (the verify fast path's ``/v1/verify`` has no ``_``: nothing
    more to do)."""
    path = _ONE_TIME_LINK.sub(r"/\1/[redacted]", scope.get("path", ""))
    return _printable(redact_secrets(path))


def _printable(text: str) -> str:
    """Text for a log line: control characters escaped, so a URL cannot forge log lines."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


async def _reject(send: Send, request_id: str, code: str = "credential_in_url",
                  message: str = "credentials must be sent in the Authorization header, never "
                  "in the URL", field: str | None = None) -> None:
    body = json.dumps(error_body(code, message, field)).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"application/json"), (b"x-request-id", request_id.encode()),
        (b"cache-control", b"no-store"),
    ]})
    await send({"type": "http.response.body", "body": body})


def log_request(scope: Scope, status: int, started: float, request_id: str,
                row: list[float] | None = None) -> None:
    """The request's duration in /metrics (by route template, never the path; ``row``: the
    counts of the route, when the caller holds them), and the access log line (no query
    string: it may hold what must not be logged; a secret pasted into the path is redacted)."""
    elapsed = time.perf_counter() - started
    if row is None:
        metrics = scope.get("keyplane.metrics")
        if metrics is not None:
            found = scope.get("route")
            row = metrics.row(scope.get("method"), getattr(found, "path", None) or UNMATCHED)
    if row is not None:
        observe(row, elapsed)
    client: tuple[str, int] = scope.get("client") or ("-", 0)
    writer = logs.access_writer
    if writer is not None:
        path = scope.get("path")
        writer.write(client[0], scope.get("method"),
                     path if path == "/v1/verify" else _logged_path(scope),  # the hot path
                     status, elapsed, request_id)
        return
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(ACCESS_FORMAT, client[0], scope.get("method"), _logged_path(scope), status,
                    elapsed * 1000, request_id)
