"""Shared by the forward-auth suites: Keyplane served as ``keyplane serve`` serves it (uvicorn
believes no forwarded header; Keyplane decides whom to believe), a route map, keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.core.rights import SYSTEM
from keyplane.web.app import create_app
from tests.conftest import make_settings
from tests.support import SettableClock, start_server

ROUTES = """
"GET /contacts/*" = ["contacts:read"]
"POST /contacts/*" = ["contacts:write"]
"GET /health" = []
"""
NGINX = {"X-Original-Method": "GET", "X-Original-URI": "/contacts/1?x=1"}
TRAEFIK = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/contacts/1"}


@contextmanager
def serving(url: str, schema: str | None, tmp_path: Path, clock: SettableClock | None = None,
            **overrides: Any) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    """Keyplane served as ``keyplane serve`` serves it: uvicorn believes no forwarded header
    (Keyplane itself decides whom to believe)."""
    kp = build(make_settings(tmp_path, url, **overrides), clock=clock, schema=schema,
               migrate_db=True)
    kp.start()
    try:
        running = start_server(create_app(kp, manage_lifecycle=False), proxy_headers=False)
        try:
            with httpx2.Client(base_url=running.url, timeout=10) as http:
                yield kp, http
        finally:
            running.stop()
    finally:
        kp.close()


@pytest.fixture
def proxied(database: tuple[str, str | None], tmp_path: Path,
            clock: SettableClock) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    """Keyplane trusting the loopback proxy, with the route map above."""
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    with serving(*database, tmp_path, clock, trusted_proxies="127.0.0.1/32", route_map=routes,
                 failure_limit=3) as served:
        yield served


def key(kp: Keyplane, tenant_id: str, owner_id: str, **fields: Any) -> str:
    return kp.keys.create(SYSTEM, tenant_id, {
        "name": "app", "owner_id": owner_id, "require_tls": False, **fields}).secret
