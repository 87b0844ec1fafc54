"""Two real worker processes (uvicorn running the app factory, as ``keyplane serve --workers``)
sharing the real PostgreSQL and Redis: revocations reach the other worker within the bound, a
shared rate limit admits exactly N, graceful stops lose no usage counts, and losing Redis
never opens the gate."""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.notify import application_name
from tests.conftest import auth
from tests.integration.procs import (
    Setup,
    Worker,
    prepared_database,
    redis_server,
    wait_until,
    worker_env,
    workers,
)
from tests.support import REDIS_URL

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with prepared_database(tmp_path) as prepared:
        yield prepared


def create_key(w: Worker, s: Setup, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "k-" + secrets.token_hex(3))
    body.setdefault("scopes", ["contacts:read"])
    r = httpx2.post(w.url + "/v1/keys", json=body, headers=auth(s.tenant.management_key),
                    timeout=10)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def verify(w: Worker, s: Setup, key: str, client: httpx2.Client | None = None,
           **extra: Any) -> dict[str, Any]:
    extra.setdefault("tls", True)
    post = client.post if client is not None else httpx2.post
    r = post(w.url + "/v1/verify", json={"key": key, **extra}, headers=auth(s.verifier),
             timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def revoke(w: Worker, s: Setup, key_id: str) -> None:
    r = httpx2.delete(f"{w.url}/v1/keys/{key_id}", headers=auth(s.tenant.management_key),
                      timeout=10)
    assert r.status_code == 204, r.text


def propagation(a: Worker, b: Worker, s: Setup, client: httpx2.Client,
                timeout: float = 3.0) -> float:
    """Seconds from a revocation answered by ``a`` to ``b`` refusing the key (whose snapshot
    ``b`` has cached)."""
    key = create_key(a, s)
    assert verify(b, s, key["key"], client)["code"] == "VALID"  # cached on b now
    revoke(a, s, key["id"])
    start = time.perf_counter()
    while verify(b, s, key["key"], client)["code"] == "VALID":
        assert time.perf_counter() - start < timeout, "worker b kept accepting a revoked key"
    return time.perf_counter() - start


def report(label: str, times: list[float]) -> None:
    print(f"\n{label}: n={len(times)} p50={statistics.median(times) * 1000:.1f} ms "
          f"max={max(times) * 1000:.1f} ms")


def redis_prefix() -> str:
    return "kptest-" + secrets.token_hex(4)


@pytest.mark.redis
@pytest.mark.slow
def test_revocation_reaches_the_other_worker_through_redis(setup: Setup,
                                                           tmp_path: Path) -> None:
    env = worker_env(setup.url, setup.data_dir, redis_url=REDIS_URL, redis_prefix=redis_prefix(),
                     change_poll_redis_seconds=60)  # the safety-net poll cannot be what works
    with workers(env, tmp_path) as (a, b), httpx2.Client() as client:
        assert a.readiness()["invalidation"] == "redis"
        wait_until(lambda: b.readiness()["invalidation"] == "redis", 5)
        times = [propagation(a, b, setup, client) for _ in range(20)]
    report("revocation A -> B with Redis", times)
    assert max(times) < 1.0


@pytest.mark.slow
def test_revocation_reaches_the_other_worker_by_polling_without_redis(setup: Setup,
                                                                      tmp_path: Path) -> None:
    env = worker_env(setup.url, setup.data_dir, change_poll_seconds=0.5, change_notify=False)
    with workers(env, tmp_path) as (a, b), httpx2.Client() as client:
        assert b.readiness()["invalidation"] == "polling"
        times = [propagation(a, b, setup, client) for _ in range(10)]
    report("revocation A -> B by polling every 0.5 s", times)
    assert max(times) < 1.0


def listening(s: Setup) -> list[int]:
    """The server processes of the workers' LISTEN connections on this test's schema."""
    with s.kp.engine.connect() as conn:
        name = application_name(conn.execute(sa.text("SELECT current_schema()")).scalar_one())
        return list(conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": name}).scalars())


@pytest.mark.slow
def test_revocation_reaches_the_other_worker_by_notify_without_redis(setup: Setup,
                                                                     tmp_path: Path) -> None:
    """PostgreSQL LISTEN/NOTIFY, no Redis: with the poll at 5 s (a minute once listening) only
    a notification explains a refusal within a second. Terminating the listening connections
    degrades both workers (logged) and they listen again by themselves."""
    env = worker_env(setup.url, setup.data_dir, change_poll_seconds=5,
                     change_poll_redis_seconds=60)
    with workers(env, tmp_path) as (a, b), httpx2.Client() as client:
        for w in (a, b):
            wait_until(lambda w=w: w.readiness()["invalidation"] == "notify", 10)
        times = [propagation(a, b, setup, client, timeout=2.0) for _ in range(10)]
        report("revocation A -> B by PostgreSQL NOTIFY (poll every 5 s)", times)
        assert max(times) < 1.0

        lost = listening(setup)
        assert len(lost) == 2
        with setup.kp.engine.connect() as conn:
            for pid in lost:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        wait_until(lambda: all("PostgreSQL change notifications lost" in w.log()
                               for w in (a, b)), 10)
        wait_until(lambda: len(set(listening(setup)) - set(lost)) == 2, 15)
        for w in (a, b):
            wait_until(lambda w=w: w.readiness()["invalidation"] == "notify", 10)
        times = [propagation(a, b, setup, client, timeout=2.0) for _ in range(3)]
        report("revocation A -> B by NOTIFY after the listeners reconnected", times)
        assert max(times) < 1.0


@pytest.mark.redis
@pytest.mark.slow
def test_a_rate_limit_and_a_quota_hold_exactly_across_two_workers(setup: Setup,
                                                                  tmp_path: Path) -> None:
    env = worker_env(setup.url, setup.data_dir, redis_url=REDIS_URL, redis_prefix=redis_prefix())
    with workers(env, tmp_path) as (a, b):
        limited = create_key(a, setup, ratelimit={"limit": 10, "window_seconds": 60})
        quota = create_key(a, setup, remaining=7)

        def hammer(key: str) -> list[str]:
            def one(i: int) -> str:
                return str(verify((a, b)[i % 2], setup, key)["code"])
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(one, range(40)))

        codes = hammer(limited["key"])
        assert codes.count("VALID") == 10
        assert codes.count("RATE_LIMITED") == 30
        last = verify(b, setup, limited["key"])
        assert last["ratelimit"]["limit"] == 10 and last["ratelimit"]["remaining"] == 0
        assert time.time() < last["ratelimit"]["reset_at"] <= time.time() + 61

        codes = hammer(quota["key"])
        assert codes.count("VALID") == 7
        assert codes.count("RATE_LIMITED") == 33
        refused = verify(a, setup, quota["key"])
        assert refused["message"] == "usage quota exhausted"


@pytest.mark.slow
def test_stopping_workers_gracefully_loses_no_usage_counts(setup: Setup, tmp_path: Path) -> None:
    # nothing is flushed on the timer: only the graceful stops write the counts
    env = worker_env(setup.url, setup.data_dir, usage_flush_seconds=3600)
    key = setup.kp.keys.create(SYSTEM, setup.tenant.id, {
        "name": "counted", "owner_id": setup.tenant.admin_id, "scopes": ["contacts:read"]})
    with workers(env, tmp_path) as (a, b):
        for _ in range(7):
            assert verify(a, setup, key.secret)["code"] == "VALID"
        for _ in range(4):
            assert verify(b, setup, key.secret)["code"] == "VALID"
        for _ in range(2):
            assert verify(b, setup, key.secret, scopes=["contacts:write"])["code"] == \
                "INSUFFICIENT_SCOPE"
        with ThreadPoolExecutor(2) as pool:  # both flush at the same moment: counts add up
            assert all(pool.map(Worker.terminate, (a, b)))
        assert totals(setup, key.key.id) == {"VALID": 11, "INSUFFICIENT_SCOPE": 2}

        a.start()  # a restart, and more traffic
        for _ in range(3):
            assert verify(a, setup, key.secret)["code"] == "VALID"
        assert a.terminate()
    assert totals(setup, key.key.id) == {"VALID": 14, "INSUFFICIENT_SCOPE": 2}
    stored = setup.kp.keys.get(SYSTEM, setup.tenant.id, key.key.id)
    assert stored.last_used_at is not None


def totals(s: Setup, key_id: str) -> dict[str, int]:
    series = s.kp.usage_reports.series(SYSTEM, s.tenant.id, key_id, start=None, end=None)
    out: dict[str, int] = {}
    for item in series["items"]:
        out[item["outcome"]] = out.get(item["outcome"], 0) + item["count"]
    return out


@pytest.mark.slow
def test_losing_redis_never_opens_the_gate_and_redis_comes_back(setup: Setup,
                                                                tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        prefix = redis_prefix()
        env = worker_env(setup.url, setup.data_dir, redis_url=server.url, redis_prefix=prefix,
                         change_poll_seconds=0.3, change_poll_redis_seconds=60,
                         degraded_cache_ttl_seconds=1)
        with workers(env, tmp_path) as (a, b), httpx2.Client() as client:
            wait_until(lambda: server.subscribers(f"{prefix}:changes") == 2, 5)
            doomed = create_key(a, setup)
            kept = create_key(a, setup, ratelimit={"limit": 1000, "window_seconds": 60})
            for k in (doomed, kept):
                assert verify(b, setup, k["key"], client)["code"] == "VALID"

            server.stop()
            wait_until(lambda: b.readiness()["invalidation"] == "degraded", 5)
            for k in (doomed, kept):  # cached again, for at most the short degraded lifetime
                assert verify(b, setup, k["key"], client)["code"] == "VALID"
            revoke(a, setup, doomed["id"])  # a cannot publish this on Redis
            took = wait_until(
                lambda: verify(b, setup, doomed["key"], client)["code"] == "REVOKED", 1.0)
            print(f"\nrevocation A -> B while Redis is down: {took * 1000:.0f} ms")
            for w in (a, b):  # valid keys (one with a rate limit) still pass
                assert verify(w, setup, kept["key"], client)["code"] == "VALID"

            server.start()
            wait_until(lambda: all(w.readiness()["invalidation"] == "redis" for w in (a, b)), 15)
            assert server.subscribers(f"{prefix}:changes") == 2
            # the poller now runs once a minute: a fast refusal can only come through Redis
            times = [propagation(a, b, setup, client) for _ in range(3)]
            report("revocation A -> B after Redis returned", times)
            assert max(times) < 0.5
        assert "Redis subscription lost" in b.log()
