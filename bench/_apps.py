"""The apps the HTTP benchmarks serve (each in its own uvicorn process)."""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyplane.sdk import KeyplaneMiddleware

HELLO = b'{"hello":"world"}'


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI hello-world: the ceiling of what the server can do."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(HELLO)).encode())]})
    await send({"type": "http.response.body", "body": HELLO})


CONTACTS = [{"id": f"con_{i}", "name": f"Contact {i}"} for i in range(3)]


async def contacts(request: Request) -> JSONResponse:
    return JSONResponse({"items": CONTACTS})


def product() -> Starlette:
    """A product route, unprotected."""
    return Starlette(routes=[Route("/contacts", contacts), Route("/", contacts)])


def protected() -> Any:
    """The same route behind KeyplaneMiddleware (``uvicorn --factory _apps:protected``)."""
    return KeyplaneMiddleware(product(), url=os.environ["BENCH_KEYPLANE_URL"],
                              token=os.environ["BENCH_VERIFIER_KEY"], exempt_paths=["/"])
