"""Per-key rate limits and usage quotas on the verify path, 429s with RateLimit-* headers, and
the slowing of repeated failures from one client address."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.core import tokens
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_settings, make_tenant, serving
from tests.integration.helpers import create_key, verify
from tests.support import SettableClock, free_port


def test_a_key_rate_limit_admits_the_limit_then_refuses(
        http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, ratelimit={"limit": 3, "window_seconds": 60})
    answers = [verify(http, verifier_key, key["key"]) for _ in range(4)]
    assert [a["code"] for a in answers] == ["VALID", "VALID", "VALID", "RATE_LIMITED"]
    assert [a["ratelimit"]["remaining"] for a in answers] == [2, 1, 0, 0]
    assert {a["ratelimit"]["limit"] for a in answers} == {3}
    refused = answers[-1]
    assert refused["valid"] is False
    assert refused["message"] == "the key's rate limit is exhausted"
    assert time.time() < refused["ratelimit"]["reset_at"] <= time.time() + 61


def test_a_key_without_a_limit_reports_none(http: httpx2.Client, tenant: Tenant,
                                            verifier_key: str) -> None:
    key = create_key(http, tenant.management_key)
    assert verify(http, verifier_key, key["key"])["ratelimit"] is None


def test_a_management_key_over_its_limit_gets_429_with_ratelimit_headers(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    limited = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "script", "owner_id": tenant.admin_id, "scopes": ["keys:read"],
        "require_tls": False, "ratelimit": {"limit": 2, "window_seconds": 60}}).secret
    for _ in range(2):
        assert http.get("/v1/keys", headers=auth(limited)).status_code == 200
    r = http.get("/v1/keys", headers=auth(limited))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 61  # reset_at is rounded up to the second
    assert r.headers["RateLimit-Limit"] == "2"
    assert r.headers["RateLimit-Remaining"] == "0"
    assert r.headers["RateLimit-Reset"] == str(retry)


def test_a_usage_quota_is_used_up_and_can_be_refilled(
        http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, remaining=3)
    assert key["remaining"] == 3
    codes = [verify(http, verifier_key, key["key"])["code"] for _ in range(4)]
    assert codes == ["VALID", "VALID", "VALID", "RATE_LIMITED"]
    refused = verify(http, verifier_key, key["key"])
    assert refused["message"] == "usage quota exhausted"
    shown = http.get(f"/v1/keys/{key['id']}", headers=auth(tenant.management_key)).json()
    assert shown["remaining"] == 0

    r = http.patch(f"/v1/keys/{key['id']}", json={"remaining": 2},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200 and r.json()["remaining"] == 2
    codes = [verify(http, verifier_key, key["key"])["code"] for _ in range(3)]
    assert codes == ["VALID", "VALID", "RATE_LIMITED"]

    r = http.patch(f"/v1/keys/{key['id']}", json={"remaining": None},
                   headers=auth(tenant.management_key))
    assert r.json()["remaining"] is None
    assert verify(http, verifier_key, key["key"])["code"] == "VALID"


def test_a_usage_quota_rejects_a_negative_count(http: httpx2.Client, tenant: Tenant) -> None:
    r = http.post("/v1/keys", json={"name": "q", "remaining": -1},
                  headers=auth(tenant.management_key))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "remaining"


def test_a_usage_quota_is_exact_under_concurrency(
        http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, remaining=10)
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: verify(http, verifier_key, key["key"])["code"],
                              range(30)))
    assert codes.count("VALID") == 10
    assert codes.count("RATE_LIMITED") == 20


def test_requests_refused_by_the_rate_limit_use_no_quota(
        http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, remaining=5,
                     ratelimit={"limit": 2, "window_seconds": 60})
    codes = [verify(http, verifier_key, key["key"])["code"] for _ in range(4)]
    assert codes == ["VALID", "VALID", "RATE_LIMITED", "RATE_LIMITED"]
    shown = http.get(f"/v1/keys/{key['id']}", headers=auth(tenant.management_key)).json()
    assert shown["remaining"] == 3


@pytest.fixture
def throttled(database: tuple[str, str | None], tmp_path: Path,
              clock: SettableClock) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    """A server that trusts the loopback proxy (so tests choose the client address with
    X-Forwarded-For) and slows an address after 5 failures a minute."""
    with serving(*database, tmp_path, clock, failure_limit=5, failure_window_seconds=60,
                 trusted_proxies=["127.0.0.1/32"]) as served:
        yield served


def from_ip(ip: str, key: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": ip}
    if key is not None:
        headers.update(auth(key))
    return headers


def excess_events(kp: Keyplane) -> list[Any]:
    return kp.audit.list(SYSTEM, None, action="excess_rate_limit_exceeded", limit=50,
                         cursor=None).items


def test_repeated_failures_from_one_address_are_slowed_and_audited_once(
        throttled: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = throttled
    tenant = make_tenant(kp)
    guesses = [tokens.generate("kp") for _ in range(5)] + ["kp_garbage"]
    statuses = [http.get("/v1/keys", headers=from_ip("203.0.113.7", g)).status_code
                for g in guesses]
    assert statuses == [401, 401, 401, 401, 401, 429]
    r = http.get("/v1/keys", headers=from_ip("203.0.113.7", tokens.generate("kp")))
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["RateLimit-Reset"] == r.headers["Retry-After"]
    # while slowed, the address gets nothing evaluated, not even a valid key
    assert http.get("/v1/keys", headers=from_ip("203.0.113.7",
                                                tenant.management_key)).status_code == 429
    # other addresses are untouched
    assert http.get("/v1/keys", headers=from_ip("203.0.113.8",
                                                tenant.management_key)).status_code == 200
    events = excess_events(kp)
    assert len(events) == 1
    assert events[0].ip == "203.0.113.7" and events[0].target == "203.0.113.7"
    assert events[0].details["scope"] == "auth" and events[0].outcome == "denied"


def test_an_ipv6_client_is_counted_by_its_slash_64(
        throttled: tuple[Keyplane, httpx2.Client]) -> None:
    _, http = throttled
    statuses = [http.get("/v1/keys", headers=from_ip(f"2001:db8:1:2::{i}",
                                                     tokens.generate("kp"))).status_code
                for i in range(1, 7)]
    assert statuses == [401] * 5 + [429]
    other_net = http.get("/v1/keys", headers=from_ip("2001:db8:1:3::1", tokens.generate("kp")))
    assert other_net.status_code == 401


def test_an_end_user_address_that_keeps_guessing_is_refused_on_verify(
        throttled: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = throttled
    tenant = make_tenant(kp)
    verifier = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                             "require_tls": False}, operator=True).secret
    valid = kp.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id}).secret
    codes = [verify(http, verifier, tokens.generate("kp"), ip="198.51.100.9")["code"]
             for _ in range(6)]
    assert codes == ["NOT_FOUND"] * 5 + ["RATE_LIMITED"]
    refused = verify(http, verifier, valid, ip="198.51.100.9")
    assert refused["code"] == "RATE_LIMITED" and refused["key_id"] is None
    assert refused["ratelimit"]["remaining"] == 0
    assert verify(http, verifier, valid, ip="198.51.100.10")["code"] == "VALID"
    assert verify(http, verifier, valid)["code"] == "VALID"  # the gateway itself is fine
    assert [e.details["scope"] for e in excess_events(kp)] == ["verify"]


def test_rate_limits_fall_back_to_each_process_when_redis_is_unreachable(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    url, schema = database
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    kp = build(make_settings(tmp_path, url, redis_url=dead, redis_timeout_seconds=0.2),
               clock=clock, schema=schema, migrate_db=True)
    kp.start()
    try:
        tenant = make_tenant(kp)
        issued = kp.keys.create(SYSTEM, tenant.id, {
            "name": "k", "owner_id": tenant.admin_id,
            "ratelimit": {"limit": 2, "window_seconds": 60}})
        codes = [kp.verifier.verify(issued.secret, tls=True).decision.code.value
                 for _ in range(3)]
        assert codes == ["VALID", "VALID", "RATE_LIMITED"]
        assert kp.propagation.mode == "degraded"
    finally:
        kp.close()


def test_guesses_without_ip_count_against_the_verifier_address(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    """A verifier that names no end-user ``ip`` has its own address slowed instead: 40
    guesses against a limit of 20 are refused after the 20th, and the fast path gives no
    cached answer to that address either."""
    with serving(*database, tmp_path, clock, failure_limit=20, failure_window_seconds=60,
                 trusted_proxies=["127.0.0.1/32"]) as (kp, http):
        tenant = make_tenant(kp)
        verifier = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        valid = kp.keys.create(SYSTEM, tenant.id, {"name": "k",
                                                   "owner_id": tenant.admin_id}).secret

        def ask(key: str, via: str = "192.0.2.7", **extra: Any) -> dict[str, Any]:
            r = http.post("/v1/verify", json={"key": key, "tls": True, **extra},
                          headers={**auth(verifier), "X-Forwarded-For": via})
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        assert [ask(valid)["code"] for _ in range(3)] == ["VALID"] * 3  # cached, remembered
        answers = [ask(tokens.generate("kp") if i % 2 else "kp_garbage") for i in range(40)]
        assert [a["code"] for a in answers] == ["NOT_FOUND" if i % 2 else "MALFORMED"
                                                for i in range(20)] + ["RATE_LIMITED"] * 20
        assert answers[-1]["ratelimit"]["limit"] == 20
        assert answers[-1]["ratelimit"]["remaining"] == 0
        refused = ask(valid)  # the cache and the remembered answer hold, but not for it
        assert refused["code"] == "RATE_LIMITED" and refused["key_id"] is None
        # end users it names are counted on their own, and other verifiers are untouched
        assert ask(valid, ip="198.51.100.1")["code"] == "VALID"
        assert ask(valid, via="192.0.2.8")["code"] == "VALID"
        assert ask(tokens.generate("kp"), via="192.0.2.8")["code"] == "NOT_FOUND"
        events = excess_events(kp)
        assert [(e.target, e.details["scope"]) for e in events] == [("192.0.2.7", "verify")]
