"""Fixtures for the SDK suites: a management client on the real server, and protected apps
served by uvicorn on another loopback port with the real middleware in front."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.sdk import Client, KeyplaneMiddleware
from tests.conftest import Tenant
from tests.support import RunningServer, start_server


class CountingTransport(httpx2.AsyncHTTPTransport):
    """A real network transport that counts the requests the middleware makes, by path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.paths[request.url.path] += 1
        return await super().handle_async_request(request)


@pytest.fixture
def kp(server: RunningServer, tenant: Tenant) -> Iterator[Client]:
    """The SDK's management client with the tenant's management key."""
    with Client(server.url, token=tenant.management_key) as client:
        yield client


def data_key(kp: Client, *scopes: str, **fields: Any) -> dict[str, Any]:
    """A new key for the product API (plain HTTP allowed unless the test says otherwise)."""
    fields.setdefault("require_tls", False)
    fields.setdefault("name", "integration")
    out: dict[str, Any] = kp.keys.create(scopes=list(scopes), **fields)
    return out


def served_uses(keyplane: Keyplane, tenant: Tenant, key_id: str) -> int:
    """VALID verifications of ``key_id`` that Keyplane has written (after a flush)."""
    keyplane.usage.flush()
    series = keyplane.usage_reports.series(SYSTEM, tenant.id, key_id, start=None, end=None)
    return sum(i["count"] for i in series["items"] if i["outcome"] == "VALID")


def find_middleware(app: Any) -> KeyplaneMiddleware:
    """The middleware instance inside a (built) Starlette/FastAPI middleware stack."""
    node = getattr(app, "middleware_stack", None) or app
    for _ in range(20):
        if isinstance(node, KeyplaneMiddleware):
            return node
        node = node.app
    raise AssertionError("no KeyplaneMiddleware in the stack")


def wait_live(server: RunningServer, middleware: KeyplaneMiddleware, timeout: float = 10) -> None:
    """Block until the middleware follows the change stream (runs on the app's loop)."""
    loop = middleware.runtime.loop
    if loop is None:  # not started yet: the first request starts it
        httpx2.get(server.url + "/", timeout=5)
        loop = middleware.runtime.loop
    assert loop is not None
    future = asyncio.run_coroutine_threadsafe(middleware.wait_live(timeout), loop)
    assert future.result(timeout + 5), "the change stream did not connect"


@dataclass
class Protected:
    url: str
    running: RunningServer
    middleware: KeyplaneMiddleware
    http: httpx2.Client


@pytest.fixture
def protect(server: RunningServer,
            verifier_key: str) -> Iterator[Callable[..., Protected]]:
    """``protect(app, **options)``: serve ``app`` wrapped in the real middleware (pointing at
    the real Keyplane server) on another loopback port, uvicorn's own proxy-header handling
    off."""
    started: list[Protected] = []

    def make(app: Any, *, url: str | None = None, token: str | None = None,
             **options: Any) -> Protected:
        middleware = KeyplaneMiddleware(app, url=url or server.url,
                                        token=token or verifier_key, **options)
        running = start_server(middleware, proxy_headers=False)
        prot = Protected(running.url, running, middleware,
                         httpx2.Client(base_url=running.url, timeout=10))
        started.append(prot)
        return prot

    yield make
    for prot in started:
        prot.http.close()
        prot.running.stop()
