"""GET /metrics as Prometheus scrapes it from a real server: the figures an operator watches
(verifications by code, latency by route template, cache hits and misses, rate-limit and
failed-credential refusals, the webhook backlog), open on loopback and behind a platform
credential for anyone else, and never a secret."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.procs import wait_until

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
FORWARDED = {"X-Forwarded-For": "203.0.113.7"}  # what a proxy on this host would add


@pytest.fixture
def served(database: tuple[str, str | None],
           tmp_path: Path) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    with serving(*database, tmp_path, failure_limit=3,
                 webhook_allow_private_targets=True) as found:
        yield found


def scrape(http: httpx2.Client, **kwargs: object) -> dict[tuple[str, tuple[tuple[str, str],
                                                                          ...]], float]:
    answer = http.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def verifier(kp: Keyplane) -> str:
    return kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                         "require_tls": False}, operator=True).secret


def test_the_figures_follow_what_the_server_did(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    tenant: Tenant = make_tenant(kp)
    gateway = verifier(kp)
    limited = kp.keys.create(SYSTEM, tenant.id, {
        "name": "limited", "owner_id": tenant.admin_id, "require_tls": False,
        "ratelimit": {"limit": 1, "window_seconds": 3600}}).secret
    before = scrape(http)

    for _ in range(3):  # the fast path answers the repeats
        assert http.post("/v1/verify", json={"key": tenant.management_key},
                         headers=auth(gateway)).json()["code"] == "VALID"
    assert http.post("/v1/verify", json={"key": limited}, headers=auth(gateway)).json()[
        "code"] == "VALID"
    assert http.post("/v1/verify", json={"key": limited}, headers=auth(gateway)).json()[
        "code"] == "RATE_LIMITED"
    key_id = kp.keys.list(SYSTEM, tenant.id).items[0].id
    assert http.get(f"/v1/keys/{key_id}", headers=auth(tenant.management_key)).status_code == 200
    hook = http.post("/v1/webhooks", headers=auth(tenant.management_key), json={
        "url": "http://127.0.0.1:9/hook", "events": ["key.*"]})
    assert hook.status_code == 201, hook.text
    http.post("/v1/keys", headers=auth(tenant.management_key), json={
        "name": "makes an event", "require_tls": False})

    for _ in range(4):  # bad credentials from one address: throttled after the third
        http.get("/v1/keys", headers=auth("kp_" + "x" * 40))

    after = scrape(http)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("keyplane_verifications_total", code="VALID") == 4
    assert grew("keyplane_verifications_total", code="RATE_LIMITED") == 1
    assert grew("keyplane_ratelimit_rejections_total", reason="rate_limit") == 1
    assert grew("keyplane_failed_credentials_throttled_total", scope="auth") >= 1
    assert grew("keyplane_verify_cache_hits_total") >= 3
    assert grew("keyplane_verify_cache_misses_total") >= 2
    assert 0 < value(after, "keyplane_verify_cache_hit_ratio") < 1
    assert value(after, "keyplane_failed_credentials_blocked_addresses") == 1

    count = "keyplane_http_request_duration_seconds_count"
    assert value(after, count, method="POST", route="/v1/verify") >= 5
    assert value(after, count, method="GET", route="/v1/keys/{key_id}") == 1
    routes = {dict(labels).get("route") for name, labels in after if name == count}
    assert not any(key_id in str(r) for r in routes)  # templates, never the path itself
    assert value(after, "keyplane_http_request_duration_seconds_bucket", method="GET",
                 route="/v1/keys/{key_id}", le="+Inf") == 1
    assert value(after, "keyplane_webhook_backlog_up") == 1
    assert value(after, "keyplane_webhook_backlog") >= 1  # nobody listens on port 9
    assert value(after, "keyplane_webhook_oldest_pending_age_seconds") >= 0


def test_metrics_are_open_on_loopback_and_need_a_platform_credential_through_a_proxy(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    tenant = make_tenant(kp)
    platform = kp.keys.create(SYSTEM, None, {"name": "prometheus", "scopes": ["platform:read"],
                                             "require_tls": False}, operator=True).secret
    scrape(http)
    assert http.get("/metrics", headers=FORWARDED).status_code == 401
    assert http.get("/metrics", headers={**FORWARDED,
                                         **auth(tenant.management_key)}).status_code == 403
    samples = scrape(http, headers={**FORWARDED, **auth(platform)})
    text = http.get("/metrics").text
    for secret in (tenant.management_key, platform, tenant.admin_password):
        assert secret not in text and secret.rsplit("_", 1)[-1] not in text
    assert samples and all(name.startswith("keyplane_") for name, _ in samples)
    assert "/metrics" not in http.get("/openapi.json").json()["paths"]


def test_an_operator_can_close_metrics_on_loopback_too(
        database: tuple[str, str | None], tmp_path: Path) -> None:
    with serving(*database, tmp_path, metrics_open_on_loopback=False) as (kp, http):
        assert http.get("/metrics").status_code == 401
        platform = kp.keys.create(SYSTEM, None, {"name": "prometheus",
                                                 "scopes": ["platform:read"],
                                                 "require_tls": False}, operator=True).secret
        assert http.get("/metrics", headers=auth(platform)).status_code == 200


def test_propagation_streams_and_the_database_are_watched(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    """Invalidation lag (change written → applied here), open change streams, the database
    pool and the outage state."""
    kp, http = served
    gateway = verifier(kp)
    before = scrape(http)
    assert value(before, "keyplane_change_stream_subscribers") == 0
    assert value(before, "keyplane_db_pool_size") == kp.settings.db_pool_size
    assert 0 <= value(before, "keyplane_db_pool_checked_out") <= kp.settings.db_pool_size
    assert value(before, "keyplane_db_up") == 1
    assert value(before, "keyplane_db_down_seconds") == 0
    assert value(before, "keyplane_db_outages_total") == 0
    # without Redis: PostgreSQL's notifications (once listening), SQLite's poll
    carrier = "notify" if kp.engine.dialect.name == "postgresql" else "polling"
    wait_until(lambda: value(scrape(http), "keyplane_invalidation_mode", mode=carrier) == 1, 10)

    lag = "keyplane_invalidation_lag_seconds_count"
    with httpx2.Client(base_url=str(http.base_url), timeout=10) as streaming, streaming.stream(
            "GET", "/v1/changes", headers={**auth(gateway), "Accept": "text/event-stream"}
    ) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")  # the stream is open and served
        assert value(scrape(http), "keyplane_change_stream_subscribers") == 1
        tenant = make_tenant(kp)
        issued = kp.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
        kp.keys.revoke(SYSTEM, tenant.id, issued.key.id)  # a change the log reader applies
        deadline = time.monotonic() + 10
        while value(scrape(http), lag, via="log") <= value(before, lag, via="log"):
            assert time.monotonic() < deadline, "no invalidation lag was recorded"
            time.sleep(0.1)
    deadline = time.monotonic() + 10
    while value(scrape(http), "keyplane_change_stream_subscribers") != 0:
        assert time.monotonic() < deadline, "a closed stream is still counted"
        time.sleep(0.1)
    after = scrape(http)
    total = value(after, "keyplane_invalidation_lag_seconds_sum", via="log")
    count = value(after, lag, via="log")
    assert 0 <= total / count < 10  # the poller's period is half a second
    assert value(after, "keyplane_invalidation_lag_seconds_bucket", via="log",
                 le="+Inf") == count


def test_a_database_outage_shows(served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    health = kp.ctx.health
    assert health is not None
    # the background workers (usage flush, change poll, webhooks) reach the database every
    # fraction of a second, and a query that succeeds reports it reachable again: stopped, so
    # the scrape is the only reader (the outage is simulated; SQLite never goes away)
    kp.stop()
    health.unreachable()  # what storage reports when a connection is lost
    try:
        during = scrape(http)  # (the database state is read before the webhook backlog)
        assert value(during, "keyplane_db_up") == 0
        assert value(during, "keyplane_db_outages_total") == 1
        assert value(during, "keyplane_db_down_seconds") >= 0
    finally:
        health.reachable()
    after = scrape(http)
    assert value(after, "keyplane_db_up") == 1 and value(after, "keyplane_db_down_seconds") == 0
    assert value(after, "keyplane_db_outages_total") == 1
