"""The example CRM (examples/crm) served by uvicorn with the real middleware, in front of the
real Keyplane server: the README's quick start, end to end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from examples.crm.app import create_app

from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.sdk import Client
from tests.conftest import Tenant, make_tenant
from tests.sdk.conftest import data_key, find_middleware, wait_live
from tests.support import RunningServer, start_server

BOUND = 1.0  # seconds: a change reaches every SDK process within this (p99)
SLACK = 2.0  # on a loaded 2-core machine


@dataclass
class Crm:
    url: str
    http: httpx2.Client
    running: RunningServer


@pytest.fixture
def crm(server: RunningServer, verifier_key: str) -> Iterator[Callable[..., Crm]]:
    """``crm(**middleware_options)``: the example app on its own loopback port."""
    running: list[Crm] = []

    def make(**options: Any) -> Crm:
        app = create_app(server.url, verifier_key, **options)
        srv = start_server(app, proxy_headers=False)
        c = Crm(srv.url, httpx2.Client(base_url=srv.url, timeout=10), srv)
        running.append(c)
        return c

    yield make
    for c in running:
        c.http.close()
        c.running.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_read_key_can_list_but_not_create(crm: Callable[..., Crm], kp: Client) -> None:
    app = crm()
    reader = data_key(kp, "contacts:read")["key"]
    r = app.http.get("/contacts", headers=bearer(reader))
    assert r.status_code == 200
    assert r.json() == {"items": []}
    r = app.http.post("/contacts", json={"name": "Ada"}, headers=bearer(reader))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_edit_key_creates_and_reads_back(crm: Callable[..., Crm], kp: Client) -> None:
    app = crm()
    editor = data_key(kp, "contacts:write", "payments:write")["key"]
    r = app.http.post("/contacts", json={"name": "Ada", "email": "ada@example.com"},
                      headers=bearer(editor))
    assert r.status_code == 201, r.text
    contact = r.json()
    r = app.http.get(f"/contacts/{contact['id']}", headers=bearer(editor))
    assert r.status_code == 200
    assert r.json()["name"] == "Ada"
    r = app.http.post("/payments", json={"contact_id": contact["id"], "amount_cents": 4200},
                      headers=bearer(editor))
    assert r.status_code == 201, r.text
    r = app.http.post("/payments", json={"contact_id": "con_nope", "amount_cents": 1},
                      headers=bearer(editor))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "contact_id"
    r = app.http.post("/payments", json={"contact_id": contact["id"], "amount_cents": -5},
                      headers=bearer(editor))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "amount_cents"
    # calendars and opportunities were not granted
    assert app.http.get("/calendars", headers=bearer(editor)).status_code == 403
    assert app.http.get("/opportunities", headers=bearer(editor)).status_code == 403


def test_no_key_gets_401_and_health_needs_none(crm: Callable[..., Crm]) -> None:
    app = crm()
    r = app.http.get("/contacts")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_key"
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'
    assert app.http.get("/healthz").json() == {"status": "ok"}


def test_named_bearer_and_x_api_key_work(crm: Callable[..., Crm], kp: Client) -> None:
    app = crm()
    key = data_key(kp, "calendars:read")["key"]
    assert app.http.get("/calendars", headers={"Authorization": f"Bearer zapier:{key}"}
                        ).status_code == 200
    assert app.http.get("/calendars", headers={"X-API-Key": key}).status_code == 200


def test_legacy_header_only_when_configured(crm: Callable[..., Crm], kp: Client) -> None:
    key = data_key(kp, "contacts:read")["key"]
    plain = crm()
    legacy = crm(legacy_headers=["X-Location-Key"])
    assert plain.http.get("/contacts", headers={"X-Location-Key": key}).status_code == 401
    assert legacy.http.get("/contacts", headers={"X-Location-Key": key}).status_code == 200


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(crm: Callable[..., Crm],
                                                              kp: Client) -> None:
    allowlisted = data_key(kp, "contacts:read", allowed_ips=["203.0.113.0/24"])["key"]
    tls_only = data_key(kp, "contacts:read", require_tls=True)["key"]
    spoof = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    direct = crm()
    r = direct.http.get("/contacts", headers={**bearer(allowlisted), **spoof})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "ip_not_allowed"
    r = direct.http.get("/contacts", headers={**bearer(tls_only), **spoof})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "tls_required"

    proxied = crm(trusted_proxies=["127.0.0.1/32"])
    assert proxied.http.get("/contacts", headers={**bearer(allowlisted), **spoof}
                            ).status_code == 200
    assert proxied.http.get("/contacts", headers={**bearer(tls_only), **spoof}
                            ).status_code == 200
    # the rightmost untrusted hop is the client: a prepended fake address changes nothing
    r = proxied.http.get("/contacts", headers={**bearer(allowlisted),
                                               "X-Forwarded-For": "203.0.113.7, 198.51.100.1"})
    assert r.status_code == 403


def test_tenants_see_only_their_own_records(crm: Callable[..., Crm], kp: Client,
                                            keyplane: Any, server: RunningServer) -> None:
    app = crm()
    mine = data_key(kp, "contacts:write")["key"]
    other_tenant: Tenant = make_tenant(keyplane, "Globex")
    with Client(server.url, token=other_tenant.management_key) as other_kp:
        theirs = data_key(other_kp, "contacts:write")["key"]
    created = app.http.post("/contacts", json={"name": "Ada"}, headers=bearer(mine)).json()
    assert app.http.get("/contacts", headers=bearer(theirs)).json() == {"items": []}
    assert app.http.get(f"/contacts/{created['id']}", headers=bearer(theirs)).status_code == 404


def refused_within(http: httpx2.Client, path: str, key: str, status: int,
                   deadline: float) -> float:
    """Seconds until ``path`` answers ``status`` for ``key`` (fails after ``deadline``)."""
    started = time.monotonic()
    while True:
        r = http.get(path, headers=bearer(key))
        if r.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < deadline, f"still {r.status_code} after {deadline}s"
        time.sleep(0.02)


def cached_for_a_minute(crm: Callable[..., Crm]) -> Crm:
    """A CRM whose verdicts would live a minute: only the change stream can explain a
    refusal within the bound."""
    app = crm(cache_ttl=60, degraded_ttl=60)
    return app


def test_revoked_key_is_refused_within_the_bound(crm: Callable[..., Crm], kp: Client,
                                                 server: RunningServer) -> None:
    app = cached_for_a_minute(crm)
    issued = data_key(kp, "contacts:read")
    assert app.http.get("/contacts", headers=bearer(issued["key"])).status_code == 200
    wait_live(app.running, find_middleware(app.running.server.config.app))
    assert app.http.get("/contacts", headers=bearer(issued["key"])).status_code == 200
    kp.keys.revoke(issued["id"])
    refused_within(app.http, "/contacts", issued["key"], 401, BOUND + SLACK)


def test_scope_change_and_owner_disable_take_effect_within_the_bound(
        crm: Callable[..., Crm], kp: Client, keyplane: Any, tenant: Tenant) -> None:
    app = cached_for_a_minute(crm)
    crm_group = keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM",
                                                           "scopes": ["contacts:write"]})
    account = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                         {"name": "API - Zapier", "role": "admin",
                                          "group_ids": [crm_group.id]})
    issued = data_key(kp, "contacts:write", owner_id=account.id)
    key = issued["key"]
    assert app.http.get("/contacts", headers=bearer(key)).status_code == 200
    wait_live(app.running, find_middleware(app.running.server.config.app))
    assert app.http.post("/contacts", json={"name": "A"}, headers=bearer(key)).status_code == 201

    kp.keys.update(issued["id"], scopes=["contacts:read"])
    started = time.monotonic()
    while app.http.post("/contacts", json={"name": "B"},
                        headers=bearer(key)).status_code != 403:
        assert time.monotonic() - started < BOUND + SLACK
        time.sleep(0.02)
    assert app.http.get("/contacts", headers=bearer(key)).status_code == 200

    kp.service_accounts.update(account.id, enabled=False)
    refused_within(app.http, "/contacts", key, 401, BOUND + SLACK)


def test_an_api_users_last_group_removed_narrows_it_within_the_bound(
        crm: Callable[..., Crm], kp: Client, keyplane: Any, tenant: Tenant) -> None:
    """api_users_need_group (the default): an API user in no data-access group reaches no data;
    the SDK says why, as /v1/verify does."""
    app = cached_for_a_minute(crm)
    readers = keyplane.groups.create(SYSTEM, tenant.id, {"name": "Readers",
                                                         "scopes": ["contacts:read"]})
    account = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                         {"name": "API - Zapier", "group_ids": [readers.id]})
    key = data_key(kp, "contacts:read", owner_id=account.id)["key"]
    assert app.http.get("/contacts", headers=bearer(key)).status_code == 200
    wait_live(app.running, find_middleware(app.running.server.config.app))
    assert app.http.get("/contacts", headers=bearer(key)).status_code == 200

    answer = kp.service_accounts.update(account.id, group_ids=[])
    assert "no data-access group" in answer["note"]
    refused_within(app.http, "/contacts", key, 403, BOUND + SLACK)
    error = app.http.get("/contacts", headers=bearer(key)).json()["error"]
    assert error["code"] == "insufficient_scope" and "no data-access group" in error["message"]


def test_without_the_change_stream_the_cache_ttl_bounds_a_revocation(
        crm: Callable[..., Crm], kp: Client) -> None:
    app = crm(changes="off", cache_ttl=0.5)
    issued = data_key(kp, "contacts:read")
    assert app.http.get("/contacts", headers=bearer(issued["key"])).status_code == 200
    kp.keys.revoke(issued["id"])
    refused_within(app.http, "/contacts", issued["key"], 401, 0.5 + SLACK)
