"""The token, revocation and introspection endpoints slow down guessing like the API does
(RFC 7009 §5, RFC 7662 §4): failed client authentication and unknown codes or refresh tokens
count against the client address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import make_tenant, serving
from tests.integration.oauth_support import approved_app
from tests.support import sqlite_url


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    with serving(sqlite_url(tmp_path), None, tmp_path, failure_limit=3,
                 trusted_proxies=["127.0.0.1/32"]) as served:
        yield served


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_bad_client_secrets_get_429_after_the_limit_and_other_addresses_do_not(
        strict: tuple[Keyplane, httpx2.Client], path: str) -> None:
    kp, http = strict
    tenant = make_tenant(kp)
    operator = kp.keys.create(SYSTEM, None, {"name": "op", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    partner = approved_app(http, tenant.management_key, operator)
    data = {"grant_type": "refresh_token", "refresh_token": "kprt_nothing", "token": "x"}
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    for _ in range(3):
        r = http.post(path, data=data, auth=(partner.client_id, "wrong"), headers=attacker)
        assert r.status_code == 401
    r = http.post(path, data=data, auth=(partner.client_id, "wrong"), headers=attacker)
    assert r.status_code == 429
    assert r.json()["error"] == "slow_down" and int(r.headers["Retry-After"]) >= 1
    assert r.headers["Cache-Control"] == "no-store"
    # even the right secret waits now from that address …
    r = http.post(path, data=data, auth=(partner.client_id, partner.client_secret),
                  headers=attacker)
    assert r.status_code == 429
    # … while the same client from another address is served as usual
    r = http.post(path, data=data, auth=(partner.client_id, partner.client_secret),
                  headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code in (200, 400)
    events = kp.audit.list(SYSTEM, None, action="excess_rate_limit_exceeded", limit=10,
                           cursor=None).items
    assert len(events) == 1 and events[0].details["scope"] == "oauth"
