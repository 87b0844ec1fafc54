"""Every 429 the server gives carries ``Retry-After``, ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset``: a key over its rate limit or its usage quota,
an address slowed for failed credentials, failed sign-ins, and OAuth's ``slow_down``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.core.rights import SYSTEM
from tests.conftest import auth, make_tenant, serving
from tests.integration.oauth_support import approved_app, sign_in
from tests.support import SettableClock


@pytest.fixture
def served(database: tuple[str, str | None], tmp_path: Path,
           clock: SettableClock) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    with serving(*database, tmp_path, clock, failure_limit=3, failure_window_seconds=60,
                 trusted_proxies=["127.0.0.1/32"], signin_limit_per_account="2/15 minutes",
                 signin_limit_per_ip="50/15 minutes") as pair:
        yield pair


def assert_limited(r: httpx2.Response, limit: int, window: int) -> None:
    assert r.status_code == 429, r.text
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= window + 1
    assert r.headers["RateLimit-Limit"] == str(limit)
    assert r.headers["RateLimit-Remaining"] == "0"
    assert r.headers["RateLimit-Reset"] == str(retry)


def test_every_kind_of_429_carries_the_ratelimit_headers(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    tenant = make_tenant(kp)

    # a key over its own rate limit
    limited = kp.keys.create(SYSTEM, tenant.id, {
        "name": "script", "owner_id": tenant.admin_id, "scopes": ["keys:read"],
        "require_tls": False, "ratelimit": {"limit": 1, "window_seconds": 60}}).secret
    assert http.get("/v1/keys", headers=auth(limited)).status_code == 200
    assert_limited(http.get("/v1/keys", headers=auth(limited)), 1, 60)

    # a key whose usage quota is used up (no rate limit: nothing left, limit 0)
    quota = kp.keys.create(SYSTEM, tenant.id, {
        "name": "quota", "owner_id": tenant.admin_id, "scopes": ["keys:read"],
        "require_tls": False, "remaining": 1}).secret
    assert http.get("/v1/keys", headers=auth(quota)).status_code == 200
    r = http.get("/v1/keys", headers=auth(quota))
    assert_limited(r, 0, 1)
    assert r.json()["error"]["message"] == "usage quota exhausted"

    # an address slowed for presenting bad credentials
    guesser = {"X-Forwarded-For": "198.51.100.1"}
    for _ in range(3):
        assert http.get("/v1/keys", headers={**guesser, **auth(tokens.generate("kp"))}
                        ).status_code == 401
    assert_limited(http.get("/v1/keys", headers={**guesser, **auth(tokens.generate("kp"))}),
                   3, 60)
    # still slowed: refused before any credential is looked at
    assert_limited(http.get("/v1/keys", headers={**guesser, **auth(tenant.management_key)}),
                   3, 60)

    # failed sign-ins
    for _ in range(2):
        assert sign_in(http, tenant.admin_email, "wrong password!!").status_code == 401
    r = sign_in(http, tenant.admin_email, tenant.admin_password)
    assert_limited(r, 2, 15 * 60)
    assert "Too many failed sign-ins" in r.text

    # OAuth: bad client secrets at the token endpoint answer slow_down
    operator = kp.keys.create(SYSTEM, None, {"name": "op", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    partner = approved_app(http, tenant.management_key, operator)
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    data = {"grant_type": "refresh_token", "refresh_token": "kprt_nothing"}
    for _ in range(3):
        assert http.post("/oauth/token", data=data, auth=(partner.client_id, "wrong"),
                         headers=attacker).status_code == 401
    r = http.post("/oauth/token", data=data, auth=(partner.client_id, "wrong"),
                  headers=attacker)
    assert_limited(r, 3, 60)
    assert r.json()["error"] == "slow_down"
