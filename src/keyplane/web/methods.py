"""``Allow`` on every route, in one place (RFC 9110 §9.3.7, §15.5.6).

* ``OPTIONS`` on any route answers 204 with ``Allow`` listing the methods its path accepts.
* A method the path does not accept answers 405 with ``Allow`` listing every method of the
  path. (Starlette's router names only the methods of the first route whose path matched,
  and FastAPI makes one route per method, so ``GET /v1/keys/{id}`` answered
  ``PUT /v1/keys/{id}`` with ``Allow: GET`` alone.)

Only OPTIONS requests and 405 answers pay for the route scan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import fastapi.routing
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def route_table(routes: Sequence[BaseRoute]) -> list[tuple[re.Pattern[str], set[str] | None]]:
    """(path regex, methods or None for "any") of every route, included routers flattened."""
    flatten: Callable[[Any], Any] | None = getattr(fastapi.routing, "iter_route_contexts", None)
    table = []
    for route in (flatten(routes) if flatten else routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None:
            methods = getattr(route, "methods", None)
            table.append((regex, set(methods) if methods else None))
    return table


class AllowedMethods:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self._table: list[tuple[re.Pattern[str], set[str] | None]] | None = None

    def allowed(self, path: str, method: str) -> str | None:
        """``Allow`` for ``path``; None if no route serves it, if one accepts ``method``
        itself, or if one accepts any method."""
        if self._table is None:
            self._table = route_table(self.routes)
        methods: set[str] = set()
        for regex, route_methods in self._table:
            if not regex.match(path):
                continue
            if route_methods is None or method in route_methods:
                return None
            methods |= route_methods
        if not methods:
            return None
        listed = [m for m in ORDER if m in methods] + sorted(methods - set(ORDER) - {"OPTIONS"})
        return ", ".join([*listed, "OPTIONS"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            allow = self.allowed(scope["path"], "OPTIONS")
            if allow is not None:
                await send({"type": "http.response.start", "status": 204,
                            "headers": [(b"allow", allow.encode())]})
                await send({"type": "http.response.body", "body": b""})
                return

        async def send_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = self.allowed(scope["path"], scope["method"])
                if allow is not None:
                    headers = [(k, v) for k, v in message.get("headers", [])
                               if k.lower() != b"allow"]
                    message["headers"] = [*headers, (b"allow", allow.encode())]
            await send(message)

        await self.app(scope, receive, send_allow)
