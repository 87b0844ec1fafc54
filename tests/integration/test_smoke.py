"""The shortest path a new operator takes: create a key over HTTP, verify it, revoke it."""

from __future__ import annotations

import httpx2

from tests.conftest import Tenant, auth


def test_create_verify_revoke(http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    r = http.post("/v1/keys", json={"name": "zapier", "scopes": ["contacts:read"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["key"]

    r = http.post("/v1/verify", json={"key": secret, "scopes": ["contacts:read"], "tls": True},
                  headers=auth(verifier_key))
    assert r.status_code == 200
    assert r.json()["valid"] is True
    assert r.json()["key_id"] == created["id"]

    r = http.delete(f"/v1/keys/{created['id']}", headers=auth(tenant.management_key))
    assert r.status_code == 204
    r = http.post("/v1/verify", json={"key": secret, "tls": True}, headers=auth(verifier_key))
    assert r.json() == r.json() | {"valid": False, "code": "REVOKED"}
