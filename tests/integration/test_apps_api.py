"""Partner apps and connections over HTTP (and the operator's CLI): registration, approval,
client secrets and their rotation, the connected-apps list, revoking a connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.oauth_support import (
    REDIRECT,
    approved_app,
    exchange,
    get_code,
    introspect,
    refresh,
    register,
)
from tests.support import RunningServer, SettableClock


@pytest.fixture
def browser(server: RunningServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, timeout=10) as client:
        yield client


def test_register_is_pending_without_credentials(http: httpx2.Client, tenant: Tenant) -> None:
    r = register(http, tenant.management_key)
    assert r.status_code == 201, r.text
    app = r.json()
    assert app["status"] == "pending"
    assert app["client_id"] is None and "client_secret" not in app
    assert app["owner_tenant_id"] == tenant.id
    assert app["redirect_uris"] == [REDIRECT]
    assert app["scopes"] == ["contacts:read", "contacts:write", "payments:read"]
    r = http.get(f"/v1/apps/{app['id']}", headers=auth(tenant.management_key))
    assert r.status_code == 200 and r.json() == app
    listed = http.get("/v1/apps", headers=auth(tenant.management_key)).json()["items"]
    assert [a["id"] for a in listed] == [app["id"]]


@pytest.mark.parametrize(("field", "value", "words"), [
    ("redirect_uris", ["http://app.example/cb"], "https"),
    ("redirect_uris", ["https://app.example@evil.example/cb"], "user information"),
    ("redirect_uris", ["https://app.example/cb#x"], "fragment"),
    ("redirect_uris", [], "non-empty"),
    ("scopes", ["keys:write"], "management scope"),
    ("scopes", ["crm:read"], "unknown scope"),
    ("homepage", "ftp://zapier.example", "https"),
    ("name", "  ", "empty"),
])
def test_registration_refuses_bad_input_naming_the_field(
        http: httpx2.Client, tenant: Tenant, field: str, value: Any, words: str) -> None:
    r = register(http, tenant.management_key, **{field: value})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"]


def test_loopback_http_redirects_are_allowed_for_native_apps(
        http: httpx2.Client, tenant: Tenant) -> None:
    r = register(http, tenant.management_key, redirect_uris=["http://127.0.0.1:8976/cb"])
    assert r.status_code == 201 and r.json()["redirect_uris"] == ["http://127.0.0.1:8976/cb"]


def test_who_may_register_and_decide(http: httpx2.Client, tenant: Tenant, operator_key: str,
                                     keyplane: Keyplane) -> None:
    reader = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "reader", "owner_id": tenant.admin_id, "require_tls": False,
        "scopes": ["keys:read"]}).secret
    assert register(http, reader).status_code == 403
    r = register(http, operator_key)
    assert r.status_code == 201 and r.json()["owner_tenant_id"] is None
    app = r.json()
    # a tenant sees only its own apps and cannot decide
    assert http.get(f"/v1/apps/{app['id']}", headers=auth(tenant.management_key)).status_code \
        == 404
    r = http.post(f"/v1/apps/{app['id']}/approve", headers=auth(tenant.management_key))
    assert r.status_code == 403
    r = http.get("/v1/apps", params={"status": "pending"}, headers=auth(operator_key))
    assert [a["id"] for a in r.json()["items"]] == [app["id"]]


def test_approval_shows_the_secret_once(http: httpx2.Client, tenant: Tenant,
                                        operator_key: str) -> None:
    app = register(http, tenant.management_key).json()
    r = http.post(f"/v1/apps/{app['id']}/approve", json={"reason": "checked"},
                  headers=auth(operator_key))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "approved" and out["client_id"].startswith("cli_")
    assert out["client_secret"].startswith("kpcs_")
    for path, key in ((f"/v1/apps/{app['id']}", tenant.management_key),
                      ("/v1/apps", operator_key)):
        r = http.get(path, headers=auth(key))
        assert out["client_secret"] not in r.text and "client_secret\"" not in r.text
    assert http.post(f"/v1/apps/{app['id']}/approve",
                     headers=auth(operator_key)).status_code == 409
    events = http.get("/v1/audit-events", params={"action": "app.approved"},
                      headers=auth(operator_key)).json()["items"]
    assert [e["target"] for e in events] == [app["id"]]
    assert out["client_secret"] not in json.dumps(events)


def test_client_secret_rotation_with_grace(http: httpx2.Client, tenant: Tenant,
                                           operator_key: str, clock: SettableClock) -> None:
    partner = approved_app(http, tenant.management_key, operator_key)
    old = partner.client_secret
    r = http.post(f"/v1/apps/{partner.app_id}/rotate-secret",
                  json={"grace_period_seconds": 3600}, headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    new = r.json()["client_secret"]
    assert new != old and r.json()["previous_secret_expires_at"] is not None

    def authenticates(secret: str) -> bool:
        r = http.post("/oauth/introspect", data={"token": "x"},
                      auth=(partner.client_id, secret))
        return r.status_code == 200

    assert authenticates(old) and authenticates(new)
    clock.advance(seconds=3599)
    assert authenticates(old)
    clock.advance(seconds=1)
    assert not authenticates(old) and authenticates(new)
    r = http.post(f"/v1/apps/{partner.app_id}/rotate-secret", json={"grace_period_seconds": 0},
                  headers=auth(operator_key))
    newest = r.json()["client_secret"]
    assert not authenticates(new) and authenticates(newest)


def test_pending_app_secret_cannot_be_rotated(http: httpx2.Client, tenant: Tenant) -> None:
    app = register(http, tenant.management_key).json()
    r = http.post(f"/v1/apps/{app['id']}/rotate-secret", headers=auth(tenant.management_key))
    # the request is well formed; the app's state refuses it
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_status"


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_connected_apps_list_and_revoke(http: httpx2.Client, browser: httpx2.Client,
                                        tenant: Tenant, operator_key: str, verifier_key: str,
                                        keyplane: Keyplane) -> None:
    partner = approved_app(http, tenant.management_key, operator_key)
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password,
                              scopes=["contacts:read", "payments:read"])
    tokens = exchange(http, partner, code, verifier).json()
    for _ in range(3):
        r = http.post("/v1/verify", json={"key": tokens["access_token"], "tls": True},
                      headers=auth(verifier_key))
        assert r.json()["valid"] is True
    r = http.post("/v1/verify", json={"key": tokens["access_token"], "tls": True,
                                      "scopes": ["payments:write"]}, headers=auth(verifier_key))
    assert r.json()["code"] == "INSUFFICIENT_SCOPE"
    keyplane.usage.flush()

    def listed() -> list[dict[str, Any]]:
        r = http.get("/v1/connections", headers=auth(tenant.management_key))
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    items = wait_for(lambda: [c for c in listed() if c["last_used_at"]])
    assert len(items) == 1
    c = items[0]
    assert c["app"]["name"] == "Zapier" and c["app"]["client_id"] == partner.client_id
    assert c["authorized_by"] == {"id": tenant.admin_id, "name": tenant.admin_email,
                                  "email": tenant.admin_email}
    assert c["scopes"] == ["contacts:read", "payments:read"]
    assert c["authorized_at"] is not None
    assert c["requests"] == {"allowed": 3, "denied": 1}

    other = make_tenant(keyplane, "Other", email="other@example.com")
    assert http.get("/v1/connections", headers=auth(other.management_key)).json()["items"] == []
    r = http.delete(f"/v1/connections/{c['id']}", headers=auth(other.management_key))
    assert r.status_code == 404

    tenant_verifier = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "gw", "owner_id": tenant.admin_id, "scopes": ["keys:verify"],
        "require_tls": False}).secret
    other_verifier = keyplane.keys.create(SYSTEM, other.id, {
        "name": "gw", "owner_id": other.admin_id, "scopes": ["keys:verify"],
        "require_tls": False}).secret
    start = http.get("/v1/changes", headers=auth(verifier_key)).json()["position"]
    r = http.delete(f"/v1/connections/{c['id']}", headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    out = r.json()

    def followed(key: str) -> list[tuple[str, str]]:
        r = http.get("/v1/changes", params={"after": start, "wait": 2}, headers=auth(key))
        return [(i["kind"], i["ref"]) for i in r.json()["items"]]

    # a tenant's own verifier (e.g. an SDK) hears of the revocation; another tenant's does not
    assert ("connection", c["id"]) in followed(tenant_verifier)
    assert ("connection", c["id"]) not in followed(other_verifier)
    assert out["revoked_at"] is not None and out["tokens_revoked"] == 2
    assert "Zapier can no longer call the API" in out["stops_working"]
    assert c["last_used_at"] in out["stops_working"]
    r = http.post("/v1/verify", json={"key": tokens["access_token"], "tls": True},
                  headers=auth(verifier_key))
    assert r.json()["code"] == "REVOKED"
    assert refresh(http, partner, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert introspect(http, partner, tokens["access_token"]) == {"active": False}
    assert listed() == []
    assert http.delete(f"/v1/connections/{c['id']}",
                       headers=auth(tenant.management_key)).status_code == 404
    events = http.get("/v1/audit-events", headers=auth(tenant.management_key)).json()["items"]
    actions = [e["action"] for e in events]
    assert {"connection.authorized", "connection.created", "connection.revoked"} <= set(actions)
    revoked = next(e for e in events if e["action"] == "connection.revoked")
    assert revoked["target"] == c["id"] and revoked["details"]["tokens_revoked"] == 2


def test_listing_connections_needs_keys_read_and_revoking_keys_write(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    verifier_only = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "v", "owner_id": tenant.admin_id, "require_tls": False,
        "scopes": ["keys:verify"]}).secret
    assert http.get("/v1/connections", headers=auth(verifier_only)).status_code == 403
    reader = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "r", "owner_id": tenant.admin_id, "require_tls": False,
        "scopes": ["keys:read"]}).secret
    assert http.get("/v1/connections", headers=auth(reader)).status_code == 200
    assert http.delete("/v1/connections/con_x", headers=auth(reader)).status_code == 403


def cli(settings_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "keyplane"
    env = {**os.environ, "COLUMNS": "200", **settings_env}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


@pytest.mark.slow
def test_operator_cli_lists_approves_and_rejects(http: httpx2.Client, tenant: Tenant,
                                                 keyplane: Keyplane) -> None:
    url = keyplane.settings.resolved_database_url
    if keyplane.engine.dialect.name == "postgresql":  # the fixture's schema, via libpq options
        with keyplane.engine.connect() as conn:
            schema = conn.exec_driver_sql("SHOW search_path").scalar()
        url += ("&" if "?" in url else "?") + urlencode({"options": f"-csearch_path={schema}"})
    env = {"KEYPLANE_DATABASE_URL": url, "KEYPLANE_DATA_DIR": str(keyplane.settings.data_dir)}
    first = register(http, tenant.management_key, name="First").json()
    second = register(http, tenant.management_key, name="Second").json()
    listed = cli(env, "apps", "list", "--status", "pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {a["id"] for a in json.loads(listed.stdout)["items"]} == {first["id"], second["id"]}

    approved = cli(env, "apps", "approve", first["id"], "--json")
    assert approved.returncode == 0, approved.stderr
    out = json.loads(approved.stdout)
    assert out["status"] == "approved"
    # the secret printed by the CLI authenticates the app against the running server
    r = http.post("/oauth/introspect", data={"token": "x"},
                  auth=(out["client_id"], out["client_secret"]))
    assert r.status_code == 200

    rejected = cli(env, "apps", "reject", second["id"], "--reason", "duplicate")
    assert rejected.returncode == 0, rejected.stderr
    assert "rejected" in rejected.stdout
    again = cli(env, "apps", "approve", second["id"])
    assert again.returncode == 1 and "rejected" in again.stderr
    human = cli(env, "apps", "list")
    assert "First" in human.stdout and "Second" in human.stdout
    assert out["client_secret"] not in human.stdout
