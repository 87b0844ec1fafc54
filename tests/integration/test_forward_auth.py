"""/v1/forward-auth, as a reverse proxy calls it (nginx, Traefik, Caddy, Envoy conventions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import ValidationError
from keyplane.core.rights import SYSTEM
from keyplane.sdk._protocol import refusal
from tests.conftest import make_tenant
from tests.integration.forward_support import NGINX, ROUTES, TRAEFIK, key, proxied, serving

__all__ = ["proxied"]  # the fixture


def test_a_valid_key_passes_with_its_identity(proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    tenant = make_tenant(kp)
    secret = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:write"])
    for method in ("GET", "POST", "HEAD", "PUT"):  # whatever method the proxy uses
        for original in (NGINX, TRAEFIK):
            r = http.request(method, "/v1/forward-auth",
                             headers={**original, "Authorization": f"Bearer zap:{secret}"})
            assert r.status_code == 200, r.text
            assert r.headers["x-keyplane-tenant-id"] == tenant.id
            assert r.headers["x-keyplane-owner-id"] == tenant.admin_id
            assert r.headers["x-keyplane-key-id"].startswith("key_")
            assert r.headers["x-keyplane-scopes"] == "contacts:read contacts:write"
    # X-API-Key, and Envoy's form: the original method and path after the prefix
    r = http.post("/v1/forward-auth/contacts/7", headers={"X-API-Key": secret})
    assert r.status_code == 200
    r = http.get("/v1/forward-auth/contacts/7%2Fx", headers={"X-API-Key": secret})  # not /7/x
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    r = http.request("PROPFIND", "/v1/forward-auth/contacts/7", headers={"X-API-Key": secret})
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    # the plain path answers the eight methods OpenAPI names
    r = http.request("QUERY", "/v1/forward-auth", headers={**TRAEFIK, "X-API-Key": secret})
    assert r.status_code == 405 and "TRACE" in r.headers["allow"]
    # a route mapped to no scope: any valid key
    r = http.get("/v1/forward-auth", headers={"X-Forwarded-Method": "GET",
                                              "X-Forwarded-Uri": "/health", "X-API-Key": secret})
    assert r.status_code == 200
    # an operator key has no tenant and no owner: the headers are sent, empty, so that a proxy
    # copying them replaces whatever the client sent
    operator = kp.keys.create(SYSTEM, None, {"name": "ops", "scopes": ["keys:verify"],
                                             "require_tls": False}, operator=True).secret
    r = http.get("/v1/forward-auth", headers={"X-Forwarded-Method": "GET",
                                              "X-Forwarded-Uri": "/health", "X-API-Key": operator})
    assert r.status_code == 200
    assert r.headers["x-keyplane-tenant-id"] == "" and r.headers["x-keyplane-owner-id"] == ""


def test_refusals_carry_the_sdks_bodies_and_headers(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    tenant = make_tenant(kp)
    reader = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:read"])
    post = {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/contacts/1"}
    r = http.get("/v1/forward-auth", headers={**post, "Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert r.headers["x-keyplane-error-body"] == r.text  # for proxies that build the refusal
    r = http.get("/v1/forward-auth", headers=NGINX)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'
    r = http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": reader[:-2] + "xx"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    kp.keys.revoke(SYSTEM, tenant.id, kp.verifier.verify(reader).snapshot.key_id)  # type: ignore[union-attr]
    r = http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": reader})
    assert r.status_code == 401 and r.json() == {
        "error": {"code": "invalid_key", "message": "the API key is not valid"}}
    # unmapped routes, and paths that are not canonical, are refused before any key is read
    for uri in ("/payments", "/contacts/../payments", "/contacts/%2e%2e/payments"):
        r = http.get("/v1/forward-auth", headers={"X-Original-Method": "GET",
                                                  "X-Original-URI": uri})
        assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    r = http.get("/v1/forward-auth", headers={"X-API-Key": reader})  # no original request
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"


def test_rate_limits_and_guesses_answer_429_with_retry_after(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    tenant = make_tenant(kp)
    limited = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:read"],
                  ratelimit={"limit": 2, "window_seconds": 60})
    statuses = [http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": limited})
                for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[0].headers["ratelimit-remaining"] == "1"
    r = statuses[2]
    assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-limit"] == "2" and r.headers["ratelimit-remaining"] == "0"
    # guesses are counted per client address, as /v1/verify counts them
    guess = {**NGINX, "X-Forwarded-For": "198.51.100.9"}
    codes = [http.get("/v1/forward-auth", headers={**guess, "X-API-Key": f"kp_guess{i}"})
             .status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]  # failure_limit=3
    other = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:read"])
    r = http.get("/v1/forward-auth", headers={**guess, "X-API-Key": other})
    assert r.status_code == 429 and "retry-after" in r.headers  # even a good key, from there
    r = http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": other})
    assert r.status_code == 200  # another address is not slowed


def test_address_and_tls_come_from_the_trusted_proxy(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    tenant = make_tenant(kp)
    listed = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:read"],
                 allowed_ips=["203.0.113.0/24"])
    tls_only = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:read"], require_tls=True)
    ok = {**NGINX, "X-Forwarded-For": "203.0.113.5", "X-API-Key": listed}
    assert http.get("/v1/forward-auth", headers=ok).status_code == 200
    r = http.get("/v1/forward-auth", headers={**ok, "X-Forwarded-For": "198.51.100.1"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
    r = http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": tls_only})
    assert r.status_code == 403 and r.json()["error"]["code"] == "tls_required"
    r = http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": tls_only,
                                              "X-Forwarded-Proto": "https"})
    assert r.status_code == 200


def test_location_id_beside_the_key(proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    mine, theirs = make_tenant(kp, "Mine"), make_tenant(kp, "Theirs")
    secret = key(kp, mine.id, mine.admin_id, scopes=["contacts:read"])
    headers = {**NGINX, "X-API-Key": secret}
    assert http.get("/v1/forward-auth", headers={**headers, "X-Location-Id": mine.id}
                    ).status_code == 200
    r = http.get("/v1/forward-auth", headers={**headers, "X-Location-Id": theirs.id})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"


def test_only_trusted_proxies_are_answered(database: tuple[str, str | None],
                                           tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    for trusted in ("", "10.0.0.0/8"):  # loopback is not a trusted proxy here
        with serving(*database, tmp_path, trusted_proxies=trusted, route_map=routes) as (kp, http):
            tenant = make_tenant(kp)
            secret = key(kp, tenant.id, tenant.admin_id, scopes=["contacts:read"])
            r = http.get("/v1/forward-auth", headers={**NGINX, "X-API-Key": secret,
                                                      "X-Forwarded-For": "10.1.2.3"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "proxy_not_trusted"


def test_a_bad_route_map_stops_the_server_at_start(database: tuple[str, str | None],
                                                   tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('"GET /contacts/*" = ["contacts:erase"]\n')
    with pytest.raises(ValidationError, match="contacts:erase"), \
            serving(*database, tmp_path, route_map=routes):
        pass
    routes.write_text('"GET /contacts/*" = [\n')
    with pytest.raises(ValidationError, match="cannot be read as TOML"), \
            serving(*database, tmp_path, route_map=routes):
        pass


def test_repeats_are_remembered_counted_and_follow_every_change(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    tenant = make_tenant(kp)
    issued = kp.keys.create(SYSTEM, tenant.id, {
        "name": "app", "owner_id": tenant.admin_id, "require_tls": False,
        "scopes": ["contacts:read"]})
    headers = {**NGINX, "X-API-Key": issued.secret}
    post = {"X-Original-Method": "POST", "X-Original-URI": "/contacts/1",
            "X-API-Key": issued.secret}
    for _ in range(5):
        assert http.get("/v1/forward-auth", headers=headers).status_code == 200
    for _ in range(2):
        assert http.get("/v1/forward-auth", headers=post).status_code == 403
    assert len(kp.verifier.cache.answers) == 1  # the pass; refusals are worked out each time
    kp.usage.flush()
    series = kp.usage_reports.series(SYSTEM, tenant.id, issued.key.id, start=None, end=None)
    totals: dict[str, int] = {}
    for item in series["items"]:
        totals[item["outcome"]] = totals.get(item["outcome"], 0) + item["count"]
    assert totals == {"VALID": 5, "INSUFFICIENT_SCOPE": 2}  # every use counted, as /v1/verify
    # a change to the key ends the remembered pass at once
    kp.keys.update(SYSTEM, tenant.id, issued.key.id, {"scopes": ["payments:read"]})
    r = http.get("/v1/forward-auth", headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    # and an address blocked for guessing gets no remembered pass
    kp.keys.update(SYSTEM, tenant.id, issued.key.id, {"scopes": ["contacts:read"]})
    guesser = {**headers, "X-Forwarded-For": "198.51.100.77"}
    assert http.get("/v1/forward-auth", headers=guesser).status_code == 200  # remembered
    for i in range(4):
        http.get("/v1/forward-auth", headers={**guesser, "X-API-Key": f"kp_nope{i}"})
    assert http.get("/v1/forward-auth", headers=guesser).status_code == 429


def test_forward_auth_agrees_with_verify(proxied: tuple[Keyplane, httpx2.Client]) -> None:
    """The same question asked both ways (the key, the route map's scopes, the client's address
    and TLS, a Location ID) gets the same answer: forward-auth's status and error code are
    /v1/verify's code through the SDK's table, a pass names the same key, and both uses are
    counted alike (one service answers both)."""
    kp, http = proxied
    mine, theirs = make_tenant(kp, "Mine"), make_tenant(kp, "Theirs")
    verifier = kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                             "require_tls": False}, operator=True).secret

    def made(**fields: Any) -> str:
        return key(kp, mine.id, mine.admin_id, **fields)

    revoked, locked = made(scopes=["contacts:read"]), made(scopes=["contacts:read"])
    kp.keys.revoke(SYSTEM, mine.id, kp.verifier.verify(revoked).snapshot.key_id)  # type: ignore[union-attr]
    kp.keys.update(SYSTEM, mine.id, kp.verifier.verify(locked).snapshot.key_id,  # type: ignore[union-attr]
                   {"enabled": False})
    valid = made(scopes=["contacts:write"])
    listed = made(scopes=["contacts:read"], allowed_ips=["203.0.113.0/24"])
    tls_only = made(scopes=["contacts:read"], require_tls=True)
    # (key, client address, https, Location ID, the code /v1/verify must give)
    cases = [
        (valid, "192.0.2.1", False, None, "VALID"),
        (valid, "192.0.2.2", False, mine.id, "VALID"),
        (valid, "192.0.2.3", False, theirs.id, "NOT_FOUND"),
        (made(scopes=["payments:read"]), "192.0.2.4", False, None, "INSUFFICIENT_SCOPE"),
        (revoked, "192.0.2.5", False, None, "REVOKED"),
        (locked, "192.0.2.6", False, None, "DISABLED"),
        (listed, "203.0.113.7", False, None, "VALID"),
        (listed, "192.0.2.8", False, None, "IP_NOT_ALLOWED"),
        (tls_only, "192.0.2.9", False, None, "TLS_REQUIRED"),
        (tls_only, "192.0.2.10", True, None, "VALID"),
        (valid[:-2] + ("xx" if not valid.endswith("xx") else "yy"), "192.0.2.11", False, None,
         None),  # a bad checksum (MALFORMED or NOT_FOUND: both unknown)
    ]
    for secret, ip, https, location, code in cases:
        body: dict[str, Any] = {"key": secret, "scopes": ["contacts:read"], "ip": ip,
                                "tls": https}
        if location is not None:
            body["tenant_id"] = location
        r = http.post("/v1/verify", json=body, headers={"Authorization": f"Bearer {verifier}"})
        assert r.status_code == 200, r.text
        verified = r.json()
        assert (code is None and verified["code"] in ("MALFORMED", "NOT_FOUND")) or \
            verified["code"] == code, (body, verified)
        headers = {**NGINX, "X-API-Key": secret, "X-Forwarded-For": ip}
        if https:
            headers["X-Forwarded-Proto"] = "https"
        if location is not None:
            headers["X-Location-Id"] = location
        for _ in range(2):  # the second may be a remembered answer: the same again
            fwd = http.get("/v1/forward-auth", headers=headers)
            if verified["valid"]:
                assert fwd.status_code == 200, (body, fwd.text)
                assert fwd.json() == {k: verified[k] for k in (
                    "valid", "key_id", "tenant_id", "owner_id", "scopes")}
                assert fwd.headers["x-keyplane-key-id"] == verified["key_id"]
            else:
                assert (fwd.status_code, fwd.json()["error"]["code"]) == \
                    refusal(verified["code"]), (body, fwd.text)
    # every use of each key counted alike: once by /v1/verify, twice by forward-auth (a key
    # beside another tenant's Location ID is answered NOT_FOUND, and its use counted VALID)
    kp.usage.flush()
    expected: dict[str, dict[str, int]] = {}
    for secret, _ip, _https, location, code in cases:
        snap = kp.verifier.identify(secret).snapshot
        if code in (None, "REVOKED") or snap is None:  # a revoked key's usage is not shown
            continue
        counted = "VALID" if location == theirs.id else code
        outcomes = expected.setdefault(snap.key_id, {})
        outcomes[counted] = outcomes.get(counted, 0) + 3
    assert len(expected) == 5
    for key_id, outcomes in expected.items():
        series = kp.usage_reports.series(SYSTEM, mine.id, key_id, start=None, end=None)
        totals: dict[str, int] = {}
        for item in series["items"]:
            totals[item["outcome"]] = totals.get(item["outcome"], 0) + item["count"]
        assert {o: totals.get(o, 0) for o in outcomes} == outcomes, (key_id, totals)
