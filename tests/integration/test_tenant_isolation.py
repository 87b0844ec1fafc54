"""Tenant isolation, route by route: every `/v1` operation is tried by tenant A's strongest
credential against tenant B's objects, by id in the path and by `?tenant_id=` in the query.
Each answers 404 (or 403 for operator-only routes), says nothing of B's object, and leaves it
unchanged. A route added later without a case here fails `test_every_route_is_tried`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.web.app import create_app
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.oauth_support import approved_app, exchange, get_code

# operations that act on no tenant object, or only on the caller's own tenant: (method, path)
NOT_TENANT_OBJECTS = {
    ("post", "/v1/verify"),  # a verifier credential; another tenant's key: see test_verify
    ("post", "/v1/usage"),
    ("get", "/v1/changes"),
    ("post", "/v1/secret-scanning/reports"),  # signed by the code host, no tenant credential
    ("post", "/v1/shares"),
    ("post", "/v1/events"),  # another tenant's key: tests/integration/test_automations.py
    ("get", "/v1/scopes"),  # the shared catalogue, read by everyone
    *((m, "/v1/forward-auth") for m in  # a proxy's question; Location ID: test_forward_auth
      ("get", "head", "post", "put", "patch", "delete", "options", "trace")),
}
# the operator's own routes: a tenant credential is refused whatever the id (403)
OPERATOR_ONLY = ("/v1/operator/", "/v1/tenants", "/v1/scopes/", "/v1/apps/{app_id}/approve",
                 "/v1/apps/{app_id}/reject", "/v1/apps/{app_id}/suspend")

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("patch", "/v1/keys/{key_id}"): {"name": "taken over"},
    ("post", "/v1/keys/{key_id}/rotate"): {"grace_period_seconds": 0},
    ("post", "/v1/keys/{key_id}/duplicate"): {"name": "copy"},
    ("patch", "/v1/members/{principal_id}"): {"role": "admin"},
    ("patch", "/v1/service-accounts/{principal_id}"): {"enabled": False},
    ("patch", "/v1/groups/{group_id}"): {"name": "taken over"},
    ("patch", "/v1/webhooks/{webhook_id}"): {"enabled": False},
    ("patch", "/v1/operator/keys/{key_id}"): {"name": "taken over"},
    ("post", "/v1/operator/keys/{key_id}/rotate"): {"grace_period_seconds": 0},
    ("post", "/v1/operator/keys/{key_id}/duplicate"): {"name": "copy"},
    ("patch", "/v1/tenants/{tenant_id}"): {"name": "taken over"},
    ("put", "/v1/scopes/{name}"): {"description": "taken over"},
    ("post", "/v1/keys"): {"name": "planted", "scopes": ["contacts:read"]},
    ("post", "/v1/members"): {"email": "planted@example.com", "role": "admin",
                              "password": "correct horse battery staple"},
    ("post", "/v1/service-accounts"): {"name": "planted"},
    ("post", "/v1/groups"): {"name": "planted", "scopes": ["contacts:read"]},
    ("post", "/v1/webhooks"): {"url": "https://hooks.example/in", "events": ["key.created"]},
    ("post", "/v1/apps"): {"name": "Planted", "homepage": "https://planted.example",
                           "redirect_uris": ["https://planted.example/cb"],
                           "scopes": ["contacts:read"]},
    ("post", "/v1/tenants"): {"name": "planted"},
    ("post", "/v1/automations"): {"name": "planted", "event": "contact.created",
                                  "webhook_ids": ["whk_0000000000000000"]},
    ("patch", "/v1/automations/{automation_id}"): {"enabled": False},
    ("post", "/v1/operator/keys"): {"name": "planted", "scopes": ["keys:verify"]},
}


@dataclass
class World:
    http: httpx2.Client
    a: Tenant
    b: Tenant
    ids: dict[str, str]  # path parameter → one of B's objects


@pytest.fixture
def world(database: tuple[str, str | None], tmp_path: Path) -> Iterator[World]:
    url, schema = database
    with serving(url, schema, tmp_path, webhook_allow_private_targets=True) as (kp, http):
        a, b = make_tenant(kp, "Alpha"), make_tenant(kp, "Bravo")
        operator_key = kp.keys.create(SYSTEM, None, {
            "name": "platform", "scopes": ["platform:write"], "require_tls": False},
            operator=True).secret
        hb = auth(b.management_key)
        key = http.post("/v1/keys", headers=hb, json={
            "name": "b-key", "scopes": ["contacts:read"], "require_tls": False}).json()
        sa = http.post("/v1/service-accounts", headers=hb, json={"name": "b-bot"}).json()
        group = http.post("/v1/groups", headers=hb,
                          json={"name": "b-group", "scopes": ["contacts:read"]}).json()
        hook = http.post("/v1/webhooks", headers=hb, json={
            "url": "http://127.0.0.1:9/hooks-of-b", "events": ["key.created"]}).json()
        automation = http.post("/v1/automations", headers=hb, json={
            "name": "b-rule", "event": "contact.created", "webhook_ids": [hook["id"]]}).json()
        share = http.post("/v1/shares", headers=hb, json={
            "ciphertext": "A" * 64, "expires_in_seconds": 3600}).json()
        partner = approved_app(http, b.management_key, operator_key)
        code, verifier = get_code(http, partner, b.admin_email, b.admin_password)
        assert exchange(http, partner, code, verifier).status_code == 200
        http.cookies.clear()
        [conn] = http.get("/v1/connections", headers=hb).json()["items"]
        ids = {"key_id": key["id"], "principal_id": sa["id"], "group_id": group["id"],
               "webhook_id": hook["id"], "share_id": share["id"],
           "automation_id": automation["id"],
               "app_id": partner.app_id, "connection_id": conn["id"],
               "delivery_id": "dlv_0000000000000000", "tenant_id": b.id,
               "name": "contacts:read"}
        yield World(http, a, b, ids)


def operations(keyplane: Keyplane) -> list[tuple[str, str, dict[str, Any]]]:
    app = create_app(keyplane, manage_lifecycle=False)
    return [(method, path, op) for path, ops in app.openapi()["paths"].items()
            if path.startswith("/v1/") for method, op in ops.items()]


def fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no id of tenant B for {path}"
    return path


def snapshot(world: World) -> dict[str, Any]:
    """B's objects as B sees them (what A must not have changed)."""
    hb = auth(world.b.management_key)
    got = {}
    for what in ("keys", "members", "service-accounts", "groups", "webhooks", "connections",
                 "automations"):
        r = world.http.get(f"/v1/{what}", headers=hb)
        assert r.status_code == 200, r.text
        got[what] = sorted(  # last use moves as B itself reads: not a change A made
            (item["id"], str(sorted((k, v) for k, v in item.items() if k != "last_used_at")))
            for item in r.json()["items"])
    return got


def test_every_route_is_tried(keyplane: Keyplane) -> None:
    for method, path, _ in operations(keyplane):
        if (method, path) in NOT_TENANT_OBJECTS or "{" in path:
            continue
        assert any(p in path for p in OPERATOR_ONLY) or method == "get" or (
            method, path) in BODIES, f"{method.upper()} {path}: add a case to the isolation test"


def test_another_tenants_ids_answer_404_and_change_nothing(
    world: World, keyplane: Keyplane
) -> None:
    before = snapshot(world)
    ha = auth(world.a.management_key)
    tried = 0
    for method, path, _ in operations(keyplane):
        if "{" not in path or (method, path) in NOT_TENANT_OBJECTS:
            continue
        url = fill(path, world.ids)
        r = world.http.request(method.upper(), url, headers=ha, json=BODIES.get((method, path)))
        expected = {403, 404} if any(p in path for p in OPERATOR_ONLY) else {404}
        assert r.status_code in expected, f"{method.upper()} {url}: {r.status_code} {r.text}"
        for secret_or_name in ("b-key", "b-bot", "b-group", "hooks-of-b", "b-rule", world.b.id):
            assert secret_or_name not in r.text, f"{method.upper()} {path} tells of B: {r.text}"
        tried += 1
    assert tried >= 30
    assert snapshot(world) == before


def test_naming_another_tenant_in_the_query_never_reaches_it(
    world: World, keyplane: Keyplane
) -> None:
    """`?tenant_id=` is for operator credentials: a tenant's key naming another tenant is
    refused or acts on its own tenant, never on the one it named."""
    before = snapshot(world)
    ha = auth(world.a.management_key)
    for method, path, op in operations(keyplane):
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        if "tenant_id" not in params or (method, path) in NOT_TENANT_OBJECTS:
            continue
        url = fill(path, world.ids) if "{" in path else path
        r = world.http.request(method.upper(), url, headers=ha, params={"tenant_id": world.b.id},
                               json=BODIES.get((method, path)))
        assert r.status_code in (201, 200, 204, 400, 403, 404), f"{method} {path}: {r.text}"
        after = snapshot(world)
        assert after == before, f"{method.upper()} {path}?tenant_id=B changed B: {r.text}"
        for name in ("b-key", "b-bot", "b-group", "hooks-of-b"):
            assert name not in r.text, f"{method.upper()} {path}?tenant_id=B tells of B"
    assert snapshot(world) == before
