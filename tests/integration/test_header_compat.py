"""The server reads a credential where the SDK does: ``Authorization: Bearer [<name>:]<key>``,
``X-API-Key``, and the headers named in ``KEYPLANE_LEGACY_HEADERS``; ``/v1/verify`` takes the
raw header value as well as the bare key, on its fast path and its route alike."""

from __future__ import annotations

from pathlib import Path

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving


def test_the_management_api_reads_x_api_key_and_named_keys(http: httpx2.Client,
                                                           tenant: Tenant) -> None:
    key = tenant.management_key
    assert http.get("/v1/keys", headers={"X-API-Key": key}).status_code == 200
    assert http.get("/v1/keys", headers={"Authorization": f"Bearer ops:{key}"}).status_code == 200
    # a legacy header is read only when configured
    r = http.get("/v1/keys", headers={"X-Ignition-API-Token": key})
    assert r.status_code == 401
    # Authorization: Bearer wins over X-API-Key (a wrong bearer is not rescued)
    r = http.get("/v1/keys", headers={"Authorization": "Bearer kp_nope", "X-API-Key": key})
    assert r.status_code == 401
    # a non-Bearer Authorization (Basic, from a browser) leaves X-API-Key to be read
    r = http.get("/v1/keys", headers={"Authorization": "Basic Zm9vOmJhcg==", "X-API-Key": key})
    assert r.status_code == 200


def test_legacy_headers_are_read_when_configured(database: tuple[str, str | None],
                                                 tmp_path: Path) -> None:
    url, schema = database
    with serving(url, schema, tmp_path,
                 legacy_headers="X-Ignition-API-Token, X-Location-Key") as (kp, http):
        tenant = make_tenant(kp)
        for name in ("X-Ignition-API-Token", "x-location-key"):
            r = http.get("/v1/keys", headers={name: f"zapier:{tenant.management_key}"})
            assert r.status_code == 200, r.text
        assert http.get("/v1/keys", headers={"X-Other": tenant.management_key}).status_code == 401


def test_verify_takes_the_raw_header_value_on_both_paths(http: httpx2.Client, keyplane: Keyplane,
                                                         tenant: Tenant, verifier_key: str) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]}).secret
    answers = []
    for value in (secret, f"zapier:{secret}", f"Bearer {secret}", f"bearer zapier:{secret}"):
        for headers in (auth(verifier_key), {"X-API-Key": verifier_key}):
            for _ in range(2):  # a miss (the route), then a hit (the fast path)
                r = http.post("/v1/verify", json={"key": value, "tls": True}, headers=headers)
                assert r.status_code == 200
                answers.append(r.json())
    assert all(a == answers[0] for a in answers)
    assert answers[0]["valid"] is True and answers[0]["scopes"] == ["contacts:read"]
    # with no Authorization, X-API-Key names the verifier on the fast path too: a wrong one
    # is refused, whatever is cached
    r = http.post("/v1/verify", json={"key": secret}, headers={"X-API-Key": "kp_nope"})
    assert r.status_code == 401


def test_verify_takes_the_location_id_beside_the_key(http: httpx2.Client, keyplane: Keyplane,
                                                     tenant: Tenant, verifier_key: str) -> None:
    other = make_tenant(keyplane, "Other")
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]}).secret
    for location, code in ((tenant.id, "VALID"), (other.id, "NOT_FOUND"), (None, "VALID")):
        body = {"key": secret, "tls": True, "tenant_id": location}
        first = http.post("/v1/verify", json=body, headers=auth(verifier_key))  # the route
        second = http.post("/v1/verify", json=body, headers=auth(verifier_key))  # fast path
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert first.json()["code"] == code, location
        if code == "NOT_FOUND":  # nothing about the key leaks to the wrong Location ID
            assert first.json()["key_id"] is None and first.json()["tenant_id"] is None
    # or as a header, as third-party tools send it beside the key (the body's field wins)
    for location, code in ((tenant.id, "VALID"), (other.id, "NOT_FOUND")):
        for _ in range(2):  # the second one is never answered from a remembered answer
            r = http.post("/v1/verify", json={"key": secret, "tls": True},
                          headers={**auth(verifier_key), "X-Location-Id": location})
            assert r.status_code == 200 and r.json()["code"] == code, location
    r = http.post("/v1/verify", json={"key": secret, "tls": True, "tenant_id": tenant.id},
                  headers={**auth(verifier_key), "X-Location-Id": other.id})
    assert r.json()["code"] == "VALID"
    r = http.post("/v1/verify", json={"key": secret}, headers={**auth(verifier_key),
                                                              "X-Location-Id": "ten id"})
    assert r.status_code == 422, r.text
    for bad in ("", "ten id", "x" * 65, "ten\n"):
        r = http.post("/v1/verify", json={"key": secret, "tenant_id": bad},
                      headers=auth(verifier_key))
        assert r.status_code == 422 and r.json()["error"]["field"] == "tenant_id", bad
