"""One tenant cannot weaken rate limiting for the others: every number a caller sets is
bounded, a limiter error tied to one key refuses that key alone, and only a lost Redis
connection makes workers count on their own (logged, and shown by /readyz)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from limits import RateLimitItemPerSecond

from keyplane.bootstrap import Keyplane
from keyplane.cache import ratelimit as rl
from keyplane.core import tokens
from keyplane.core.attempts import Limit
from keyplane.core.errors import ValidationError
from keyplane.core.rights import SYSTEM
from keyplane.services.throttle import FailureThrottle
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.helpers import create_key, verify
from tests.integration.procs import redis_server
from tests.support import REDIS_URL, SettableClock, free_port

HOSTILE_LIMITS = [2**63, 10**30, 10**100, 1_000_001]


def refused(r: httpx2.Response, field: str, bound: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    assert bound in error["message"], error


def test_every_number_and_list_a_caller_sets_is_bounded(http: httpx2.Client,
                                                        tenant: Tenant) -> None:
    mk = auth(tenant.management_key)
    for limit in HOSTILE_LIMITS:
        refused(http.post("/v1/keys", headers=mk,
                          json={"name": "x", "ratelimit": {"limit": limit}}),
                "ratelimit.limit", "1000000")
    refused(http.post("/v1/keys", headers=mk, json={
        "name": "x", "ratelimit": {"limit": 5, "window_seconds": 86401}}),
        "ratelimit.window_seconds", "86400")
    refused(http.post("/v1/keys", headers=mk, json={"name": "x", "remaining": 10**30}),
            "remaining", "1000000000000")
    refused(http.post("/v1/keys", headers=mk, json={"name": "x", "expires_in_days": 10**30}),
            "expires_in_days", "365")  # the tenant's own maximum (at most 3650)
    refused(http.post("/v1/keys", headers=mk, json={
        "name": "x", "allowed_ips": [f"10.0.{i // 250}.{i % 250}/32" for i in range(101)]}),
        "allowed_ips", "100")
    key = create_key(http, tenant.management_key)
    refused(http.patch(f"/v1/keys/{key['id']}", headers=mk,
                       json={"ratelimit": {"limit": 10**30}}), "ratelimit.limit", "1000000")
    refused(http.post(f"/v1/keys/{key['id']}/rotate", headers=mk,
                      json={"grace_period_seconds": 10**30}),
            "grace_period_seconds", str(90 * 86400))
    refused(http.patch(f"/v1/tenants/{tenant.id}", headers=mk,
                       json={"policy": {"max_expiry_days": 10**30}}),
            "policy.max_expiry_days", "3650")
    refused(http.post("/v1/groups", headers=mk,
                      json={"name": "g", "scopes": ["contacts:read"] * 201}), "scopes", "200")
    refused(http.post("/v1/members", headers=mk, json={
        "email": "many@example.com", "group_ids": [f"grp_{i}" for i in range(101)]}),
        "group_ids", "100")
    refused(http.get("/v1/keys", params={"limit": 201}, headers=mk), "limit", "200")
    # the largest limit is accepted
    assert create_key(http, tenant.management_key,
                      ratelimit={"limit": 1_000_000})["ratelimit"]["limit"] == 1_000_000


def test_the_services_bound_the_limit_too(keyplane: Keyplane, tenant: Tenant) -> None:
    """The CLI and the admin pages call the services directly."""
    with pytest.raises(ValidationError) as caught:
        keyplane.keys.create(SYSTEM, tenant.id, {"name": "x", "owner_id": tenant.admin_id,
                                                 "ratelimit": {"limit": 10**30}})
    assert caught.value.field == "ratelimit.limit"
    assert "1000000" in caught.value.message


# -- two workers sharing one Redis --------------------------------------------------------


@contextmanager
def two_workers(database: tuple[str, str | None], tmp_path: Path, clock: SettableClock,
                prefix: str) -> Iterator[list[tuple[Keyplane, httpx2.Client]]]:
    """Two Keyplanes on one database and one Redis, each served on its own port, trusting
    the loopback proxy (tests choose the client address with X-Forwarded-For)."""
    with ExitStack() as stack:
        yield [stack.enter_context(serving(*database, tmp_path, clock, redis_url=REDIS_URL,
                                           redis_prefix=prefix, failure_limit=20,
                                           trusted_proxies=["127.0.0.1/32"]))
               for _ in range(2)]
    client = redis.Redis.from_url(REDIS_URL)
    for k in client.scan_iter(f"{prefix}:*"):
        client.delete(k)
    client.close()


@pytest.fixture
def workers(database: tuple[str, str | None], tmp_path: Path,
            clock: SettableClock) -> Iterator[tuple[str, list[tuple[Keyplane, httpx2.Client]]]]:
    prefix = "t" + secrets.token_hex(6)
    with two_workers(database, tmp_path, clock, prefix) as served:
        yield prefix, served


def gateway(kp: Keyplane) -> str:
    return kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                         "require_tls": False}, operator=True).secret


def ready(http: httpx2.Client) -> dict[str, Any]:
    r = http.get("/readyz")
    assert r.status_code == 200
    out: dict[str, Any] = r.json()
    return out


@pytest.mark.redis
def test_a_hostile_limit_leaves_other_tenants_counted_across_workers(
        workers: tuple[str, list[tuple[Keyplane, httpx2.Client]]]) -> None:
    _, served = workers
    kp, first = served[0]
    attacker, victim = make_tenant(kp, "Attacker"), make_tenant(kp, "Victim")
    gw = gateway(kp)
    hostile = []
    for limit in HOSTILE_LIMITS:  # refused now; before, verifying them broke the Redis limiter
        r = first.post("/v1/keys", headers=auth(attacker.management_key),
                       json={"name": "hostile", "ratelimit": {"limit": limit}})
        if r.status_code == 201:
            hostile.append(r.json()["key"])
    guarded = create_key(first, victim.management_key,
                         ratelimit={"limit": 5, "window_seconds": 600})["key"]
    codes = []
    for i in range(12):
        http = served[i % 2][1]
        for h in hostile:
            verify(http, gw, h)
        codes.append(verify(http, gw, guarded)["code"])
    assert codes.count("VALID") == 5 and codes[:5] == ["VALID"] * 5
    assert set(codes[5:]) == {"RATE_LIMITED"}
    assert [ready(http)["ratelimit"] for _, http in served] == ["redis", "redis"]


@pytest.mark.redis
def test_a_limiter_error_on_one_key_refuses_that_key_alone(
        workers: tuple[str, list[tuple[Keyplane, httpx2.Client]]],
        caplog: pytest.LogCaptureFixture) -> None:
    prefix, served = workers
    kp, first = served[0]
    attacker, victim = make_tenant(kp, "Attacker"), make_tenant(kp, "Victim")
    gw = gateway(kp)
    broken = create_key(first, attacker.management_key,
                        ratelimit={"limit": 1000, "window_seconds": 600})
    assert verify(first, gw, broken["key"])["code"] == "VALID"
    # the key's window in Redis now holds the wrong type: the limiter's script fails on it
    client = redis.Redis.from_url(REDIS_URL)
    stored = [k for k in client.scan_iter(f"{prefix}:limits:*") if broken["id"].encode() in k]
    assert len(stored) == 1
    client.delete(stored[0])
    client.set(stored[0], "not a list")
    client.close()

    guarded = create_key(first, victim.management_key,
                         ratelimit={"limit": 5, "window_seconds": 600})["key"]
    codes, broken_answers = [], []
    with caplog.at_level(logging.WARNING, logger="keyplane.ratelimit"):
        for i in range(12):
            http = served[i % 2][1]
            broken_answers.append(verify(http, gw, broken["key"]))
            codes.append(verify(http, gw, guarded)["code"])
    # fails closed for the broken key, and the other tenant keeps its one shared count
    assert {a["code"] for a in broken_answers} == {"RATE_LIMITED"}
    assert broken_answers[0]["message"] == (
        "the key's rate limit could not be checked; try again later")
    assert broken_answers[0]["ratelimit"]["remaining"] == 0
    assert codes == ["VALID"] * 5 + ["RATE_LIMITED"] * 7
    assert [ready(http)["ratelimit"] for _, http in served] == ["redis", "redis"]
    logged = [r for r in caplog.records if r.name == "keyplane.ratelimit"]
    errors = [r for r in logged if r.levelno == logging.ERROR]
    assert len(errors) == 2  # once per worker, not once per request
    assert broken["id"] in errors[0].getMessage()
    assert not [r for r in logged if "unreachable" in r.getMessage()]

    # the failed-guess limit of 20 still holds across both workers
    statuses = []
    for i in range(40):
        http = served[i % 2][1]
        verify(http, gw, broken["key"])
        statuses.append(http.get("/v1/keys", headers={
            "X-Forwarded-For": "203.0.113.50", **auth(tokens.generate("kp"))}).status_code)
    assert statuses == [401] * 20 + [429] * 20


# -- the limiter itself, on real Redis ------------------------------------------------------


@pytest.mark.redis
def test_a_wrong_type_in_redis_is_a_fault_of_that_count_not_a_lost_connection() -> None:
    prefix = "t" + secrets.token_hex(6)
    store = rl.LimitStore(REDIS_URL, prefix=prefix)
    item = RateLimitItemPerSecond(5, 60, namespace="key")
    try:
        assert store.run(lambda lim: lim.hit(item, "api_key", "ok"))
        client = redis.Redis.from_url(REDIS_URL)
        client.set(f"{prefix}:limits:key/api_key/bad/5/60/second", "x")
        with pytest.raises(rl.LimiterFault):
            store.run(lambda lim: lim.hit(item, "api_key", "bad"))
        assert store.mode == "redis"
        assert store.run(lambda lim: lim.hit(item, "api_key", "ok"))
        # nothing was counted in this process's memory
        assert store.memory.get_window_stats(item, "api_key", "ok").remaining == 5
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        client.close()
    finally:
        store.close()


def test_a_lost_connection_falls_back_to_memory_logged_once_each_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(rl, "RETRY_REDIS_SECONDS", 0.0)  # try Redis again on every call
    item = RateLimitItemPerSecond(100, 60, namespace="key")
    with redis_server(tmp_path) as server, caplog.at_level(logging.INFO, "keyplane.ratelimit"):
        store = rl.LimitStore(server.url, prefix="p", timeout=0.2)
        try:
            assert store.run(lambda lim: lim.hit(item, "k")) and store.mode == "redis"
            server.stop()
            for _ in range(3):
                assert store.run(lambda lim: lim.hit(item, "k"))
            assert store.mode == "memory"
            assert store.memory.get_window_stats(item, "k").remaining == 97
            server.start()
            for _ in range(3):
                assert store.run(lambda lim: lim.hit(item, "k"))
            assert store.mode == "redis"
        finally:
            store.close()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records
                if r.name == "keyplane.ratelimit"]
    assert [level for level, _ in messages] == [logging.WARNING, logging.WARNING]
    assert "unreachable" in messages[0][1] and "back" in messages[1][1]


def test_readyz_shows_where_rate_limits_are_counted(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    with serving(*database, tmp_path / "alone", clock) as (_, http):
        assert ready(http)["ratelimit"] == "memory"  # no Redis configured
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with serving(*database, tmp_path / "lost", clock, redis_url=dead,
                 redis_timeout_seconds=0.2) as (kp, http):
        tenant = make_tenant(kp)
        limited = create_key(http, tenant.management_key,
                             ratelimit={"limit": 2, "window_seconds": 60})
        gw = gateway(kp)
        codes = [verify(http, gw, limited["key"])["code"] for _ in range(3)]
        assert codes == ["VALID", "VALID", "RATE_LIMITED"]  # counted in memory meanwhile
        assert ready(http)["ratelimit"] == "memory"


@pytest.mark.redis
def test_readyz_shows_redis_when_counts_are_shared(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    with serving(*database, tmp_path, clock, redis_url=REDIS_URL,
                 redis_prefix="t" + secrets.token_hex(6)) as (_, http):
        assert ready(http)["ratelimit"] == "redis"


@pytest.mark.redis
def test_a_fault_counting_one_address_refuses_that_address_alone(keyplane: Keyplane) -> None:
    prefix = "t" + secrets.token_hex(6)
    store = rl.LimitStore(REDIS_URL, prefix=prefix)
    throttle = FailureThrottle(keyplane.ctx, rl.AttemptCounts(store), limit=3, window=60,
                               signin_per_account=Limit(5, 60), signin_per_address=Limit(5, 60))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(f"{prefix}:limits:fail/verify/198.51.100.66/3/60/second", "x")
        assert throttle.failed("verify", ip_address("198.51.100.66")) == 60
        assert throttle.retry_after("verify", ip_address("198.51.100.66")) == 60
        assert throttle.failed("verify", ip_address("198.51.100.67")) is None  # counted
        assert store.mode == "redis"
    finally:
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        client.close()
        store.close()
