"""Refusals as plain ASGI: ``{"error": {"code", "message"}}`` with the fitting status and
headers (``WWW-Authenticate`` on 401/403, ``Retry-After`` and ``RateLimit-*`` on 429)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Header = tuple[bytes, bytes]


class Denied(Exception):
    """A refusal; :class:`KeyplaneMiddleware` turns it into the response.

    ``requires`` raises it from endpoints and FastAPI dependencies."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Sequence[Header] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)

    async def send(self, scope: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            # before accept, a close makes the server answer the handshake with 403
            await send({"type": "websocket.close", "code": 1013 if self.status == 503 else 1008,
                        "reason": self.code})
            return
        body = json.dumps({"error": {"code": self.code, "message": self.message}}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def bearer_challenge(realm: str, error: str | None = None, scope: str | None = None) -> Header:
    value = f'Bearer realm="{realm}"'
    if error:
        value += f', error="{error}"'
    if scope:
        value += f', scope="{scope}"'
    return (b"www-authenticate", value.encode("latin-1"))
