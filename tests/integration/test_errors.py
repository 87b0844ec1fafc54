"""Bad input and refused calls over real HTTP: a clear error envelope naming the field, the right
status, and nothing written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.helpers import all_key_ids, code, create_key
from tests.support import SettableClock


def error(r: httpx2.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    return err


class State:
    """What a tenant can see of its keys and audit log: compared before and after bad calls."""

    def __init__(self, http: httpx2.Client, key: str) -> None:
        self.http, self.key = http, key

    def __call__(self) -> tuple[Any, ...]:
        keys = self.http.get("/v1/keys", params={"limit": 200}, headers=auth(self.key))
        audit = self.http.get("/v1/audit-events", params={"limit": 200}, headers=auth(self.key))
        assert keys.status_code == audit.status_code == 200
        return ([{**k, "last_used_at": None} for k in keys.json()["items"]],
                [e["id"] for e in audit.json()["items"]])


@pytest.fixture
def state(http: httpx2.Client, tenant: Tenant) -> State:
    return State(http, tenant.management_key)


# -- bodies -----------------------------------------------------------------------------------


def test_malformed_json(http: httpx2.Client, tenant: Tenant, state: State) -> None:
    before = state()
    for raw in (b'{"name": ', b"{'name': 'x'}", b"not json", b'{"name": "x",}'):
        r = http.post("/v1/keys", content=raw, headers={**auth(tenant.management_key),
                                                         "content-type": "application/json"})
        err = error(r, 400)
        assert err["code"] == "malformed_json", raw
    err = error(http.post("/v1/keys", json=["name"], headers=auth(tenant.management_key)), 422)
    assert err["field"] == "body"
    err = error(http.post("/v1/keys", headers=auth(tenant.management_key)), 422)
    assert err["field"] == "body"
    assert state() == before


CREATE_CASES: list[tuple[dict[str, Any], str]] = [
    # wrong types
    ({"name": 123}, "name"),
    ({"name": None}, "name"),
    ({"name": "x", "description": 5}, "description"),
    ({"name": "x", "scopes": "contacts:read"}, "scopes"),
    ({"name": "x", "scopes": [1]}, "scopes"),
    ({"name": "x", "require_tls": "yes"}, "require_tls"),
    ({"name": "x", "expires_in_days": "90"}, "expires_in_days"),
    ({"name": "x", "expires_in_days": 1.5}, "expires_in_days"),
    ({"name": "x", "allowed_ips": "10.0.0.0/8"}, "allowed_ips"),
    ({"name": "x", "meta": ["a"]}, "meta"),
    ({"name": "x", "owner_id": 7}, "owner_id"),
    ({"name": "x", "ratelimit": {"limit": "many"}}, "ratelimit"),
    ({"name": "x", "ratelimit": {"limit": 0}}, "ratelimit"),
    # missing or unknown fields
    ({}, "name"),
    ({"name": "x", "colour": "red"}, "colour"),
    # meaning
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x\u0000y"}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "x", "description": "d" * 1001}, "description"),
    ({"name": "x", "scopes": ["contacts:delete"]}, "scopes"),
    ({"name": "x", "scopes": ["nonsense"]}, "scopes"),
    ({"name": "x", "allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
    ({"name": "x", "allowed_ips": ["300.1.1.1"]}, "allowed_ips"),
    ({"name": "x", "allowed_ips": ["203.0.113.0/24", "not-an-ip"]}, "allowed_ips"),
    ({"name": "x", "allowed_ips": ["2001:db8::/129"]}, "allowed_ips"),
    ({"name": "x", "expires_in_days": -1}, "expires_in_days"),
    ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
    ({"name": "x", "expires_in_days": 366}, "expires_in_days"),  # policy maximum: 365
    ({"name": "x", "expires_in_days": 10**12}, "expires_in_days"),
    ({"name": "x", "expires_in_days": None}, "expires_in_days"),  # policy: keys must expire
    ({"name": "x", "meta": {"blob": "x" * 5000}}, "meta"),
]


def test_bad_create_bodies_name_the_field_and_write_nothing(
    http: httpx2.Client, tenant: Tenant, state: State
) -> None:
    before = state()
    for body, field in CREATE_CASES:
        r = http.post("/v1/keys", json=body, headers=auth(tenant.management_key))
        err = error(r, 422)
        assert err["field"].split(".")[0] == field, (body, err)
        assert err["code"] == "invalid_request", (body, err)
    # an owner that does not exist is not found, like an id in the path
    err = error(http.post("/v1/keys", json={"name": "x", "owner_id": "usr_doesnotexist"},
                          headers=auth(tenant.management_key)), 404)
    assert err["field"] == "owner_id" and err["code"] == "not_found"
    assert state() == before


def test_bad_edits_name_the_field_and_change_nothing(
    http: httpx2.Client, tenant: Tenant, state: State, verifier_key: str
) -> None:
    mk = tenant.management_key
    key = create_key(http, mk, name="stable", scopes=["contacts:read"], require_tls=False)
    url = f"/v1/keys/{key['id']}"
    before = state()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"description": "d" * 1001}, "description"),
        ({"scopes": ["contacts:delete"]}, "scopes"),
        ({"scopes": None}, "scopes"),
        ({"allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
        ({"enabled": "no"}, "enabled"),
        ({"require_tls": 1}, "require_tls"),
        ({"meta": {"blob": "x" * 5000}}, "meta"),
        ({"expires_in_days": 5}, "expires_in_days"),  # not editable
        ({"owner_id": tenant.admin_id}, "owner_id"),  # not editable
        # one bad field spoils the whole change
        ({"name": "renamed", "allowed_ips": ["nope"]}, "allowed_ips"),
        ({"enabled": False, "scopes": ["contacts:delete"]}, "scopes"),
    ]
    for body, field in cases:
        err = error(http.patch(url, json=body, headers=auth(mk)), 422)
        assert err["field"].split(".")[0] == field, (body, err)
    rotations: list[tuple[dict[str, Any], str]] = [
        ({"grace_period_seconds": -1}, "grace_period_seconds"),
        ({"grace_period_seconds": "0"}, "grace_period_seconds"),
        ({"grace_period_seconds": 10**9}, "grace_period_seconds"),
        ({"grace": 0}, "grace"),
    ]
    for body, field in rotations:
        err = error(http.post(url + "/rotate", json=body, headers=auth(mk)), 422)
        assert err["field"] == field, (body, err)
    duplicates: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name"), ({"name": "x", "scopes": []}, "scopes")]
    for body, field in duplicates:
        err = error(http.post(url + "/duplicate", json=body, headers=auth(mk)), 422)
        assert err["field"] == field, (body, err)
    assert state() == before
    assert code(http, verifier_key, key["key"], scopes=["contacts:read"]) == "VALID"


def test_text_that_cannot_be_stored_is_refused_up_front(http: httpx2.Client, tenant: Tenant,
                                                        state: State) -> None:
    """NUL (PostgreSQL refuses it) and unpaired surrogates (no UTF-8 for them: a stored one
    would break every listing that includes the record) get a 4xx naming the field."""
    mk = auth(tenant.management_key)
    before = state()
    raw_bodies = [
        (b'{"name": "x", "meta": {"note": "\\ud800"}}', "meta"),
        (b'{"name": "x", "meta": {"\\udfff": 1}}', "meta"),
        (b'{"name": "x", "meta": {"deep": [{"a": "\\u0000"}]}}', "meta"),
        (b'{"name": "x", "owner_id": "usr_\\u0000"}', "owner_id"),
        (b'{"name": "\\ud800"}', "name"),
    ]
    for raw, field in raw_bodies:
        r = http.post("/v1/keys", content=raw, headers={**mk, "content-type": "application/json"})
        err = error(r, 422)
        assert err["field"] == field, (raw, err)
    r = http.post("/v1/service-accounts", json={"name": "x", "group_ids": ["grp_\x00"]},
                  headers=mk)
    assert error(r, 422)["field"] == "group_ids"
    assert state() == before  # and the listing still works

    for params, field in (({"q": "a\x00"}, "q"), ({"owner_id": "\x00"}, "owner_id"),
                          ({"cursor": "\x00"}, "cursor"), ({"enabled": "\x00"}, "enabled")):
        err = error(http.get("/v1/keys", params=params, headers=mk), 400)
        assert (err["code"], err["field"]) == ("invalid_request", field)
    err = error(http.get("/v1/audit-events", params={"action": "\x00"}, headers=mk), 400)
    assert err["field"] == "action"
    for path in ("/v1/keys/%00", "/v1/members/usr_%00"):
        err = error(http.get(path, headers=mk), 400)
        assert err["field"] == "path"
    assert state() == before


def test_non_expiring_keys_follow_the_tenant_policy(http: httpx2.Client, tenant: Tenant) -> None:
    mk = tenant.management_key
    err = error(http.post("/v1/keys", json={"name": "forever", "expires_in_days": None},
                          headers=auth(mk)), 422)
    assert err["field"] == "expires_in_days"
    r = http.patch(f"/v1/tenants/{tenant.id}",
                   json={"policy": {"allow_non_expiring": True, "max_expiry_days": 30,
                                    "default_expiry_days": 30}},
                   headers=auth(mk))
    assert r.status_code == 200, r.text
    forever = create_key(http, mk, name="forever", expires_in_days=None)
    assert forever["expires_at"] is None
    err = error(http.post("/v1/keys", json={"name": "long", "expires_in_days": 31},
                          headers=auth(mk)), 422)
    assert err["field"] == "expires_in_days"
    assert create_key(http, mk, name="month", expires_in_days=30)["expires_at"] is not None


# -- authentication and authorisation ---------------------------------------------------------


def test_missing_or_unusable_credentials_get_401(http: httpx2.Client, tenant: Tenant,
                                                 verifier_key: str,
                                                 clock: SettableClock) -> None:
    mk = tenant.management_key
    expired = create_key(http, mk, name="short", expires_in_days=1, require_tls=False,
                         scopes=["keys:read"])
    revoked = create_key(http, mk, name="gone", require_tls=False, scopes=["keys:read"])
    locked = create_key(http, mk, name="locked", require_tls=False, scopes=["keys:read"])
    assert http.delete(f"/v1/keys/{revoked['id']}", headers=auth(mk)).status_code == 204
    assert http.patch(f"/v1/keys/{locked['id']}", json={"enabled": False},
                      headers=auth(mk)).status_code == 200
    clock.advance(days=1)
    typo = mk[:-1] + ("A" if mk[-1] != "A" else "B")

    missing: tuple[dict[str, str], ...] = ({}, {"Authorization": ""}, {"Authorization": "Bearer"},
               {"Authorization": f"Basic {mk}"},
               {"Authorization": mk})
    unusable = (auth("nonsense"), auth(typo), auth(tokens.generate("kp")),
                auth(expired["key"]), auth(revoked["key"]), auth(locked["key"]))

    def errors(headers: dict[str, str]) -> set[tuple[str, str]]:
        out = set()
        for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"),
                             ("POST", "/v1/verify"), ("GET", "/v1/scopes")):
            r = http.request(method, path, json={"name": "x"} if method == "POST" else None,
                             headers=headers)
            err = error(r, 401)
            assert r.headers["www-authenticate"].lower().startswith("bearer"), headers
            out.add((err["code"], err["message"]))
        return out

    for headers in missing:
        assert {c for c, _ in errors(headers)} == {"unauthenticated"}, headers
    # unknown, malformed, expired, revoked and locked keys look alike: no state oracle
    answers = set().union(*(errors(h) for h in unusable))
    assert answers == {("invalid_credential", "the credential is not valid")}
    assert all_key_ids(http, mk)  # the real key still works


def test_a_credential_without_the_scope_gets_403(http: httpx2.Client, tenant: Tenant,
                                                 state: State) -> None:
    mk = tenant.management_key
    reader = create_key(http, mk, name="reader", scopes=["keys:read"], require_tls=False)
    target = create_key(http, mk, name="target")
    before = state()
    rk = auth(reader["key"])
    assert http.get("/v1/keys", headers=rk).status_code == 200
    assert http.get(f"/v1/keys/{target['id']}", headers=rk).status_code == 200
    for method, path, body in (
        ("POST", "/v1/keys", {"name": "sneaky"}),
        ("PATCH", f"/v1/keys/{target['id']}", {"enabled": False}),
        ("DELETE", f"/v1/keys/{target['id']}", None),
        ("POST", f"/v1/keys/{target['id']}/rotate", {}),
        ("POST", f"/v1/keys/{target['id']}/duplicate", {}),
        ("POST", "/v1/members", {"email": "x@example.com"}),
        ("POST", "/v1/verify", {"key": target["key"]}),
        ("POST", "/v1/tenants", {"name": "mine now"}),
        ("GET", "/v1/tenants", None),
    ):
        err = error(http.request(method, path, json=body, headers=rk), 403)
        assert err["code"] == "insufficient_scope", (method, path)
    # a data-only key cannot manage anything
    data = create_key(http, mk, name="data", scopes=["contacts:write"], require_tls=False)
    for method, path in (("GET", "/v1/keys"), ("GET", "/v1/members"),
                         ("GET", "/v1/audit-events")):
        err = error(http.request(method, path, headers=auth(data["key"])), 403)
        assert err["code"] == "insufficient_scope"
    # a management key cannot grant management scopes it does not hold itself
    for scopes in (["keys:verify"], ["platform:write"]):
        err = error(http.post("/v1/keys", json={"name": "escalate", "scopes": scopes},
                              headers=auth(mk)), 403)
        assert err["code"] == "insufficient_scope" and err["field"] == "scopes"
    err = error(http.post("/v1/keys", json={"name": "escalate", "scopes": ["keys:write"]},
                          headers=rk), 403)
    assert err["code"] == "insufficient_scope"
    after = state()
    assert after[0] == [k for k in after[0] if k["id"] == data["id"]] + before[0]


def test_tenants_are_isolated_both_ways(http: httpx2.Client, tenant: Tenant,
                                        keyplane: Keyplane, verifier_key: str) -> None:
    other = make_tenant(keyplane, "Globex")
    mine = create_key(http, tenant.management_key, name="mine")
    theirs = create_key(http, other.management_key, name="theirs")

    def attempts(key: str, victim: dict[str, Any], victim_tenant: str) -> Iterator[
            httpx2.Response]:
        url = f"/v1/keys/{victim['id']}"
        yield http.get(url, headers=auth(key))
        yield http.patch(url, json={"enabled": False}, headers=auth(key))
        yield http.post(url + "/rotate", json={"grace_period_seconds": 0}, headers=auth(key))
        yield http.post(url + "/duplicate", json={}, headers=auth(key))
        yield http.delete(url, headers=auth(key))
        yield http.get("/v1/keys", params={"tenant_id": victim_tenant}, headers=auth(key))
        yield http.get(f"/v1/tenants/{victim_tenant}", headers=auth(key))
        yield http.get(url, params={"tenant_id": victim_tenant}, headers=auth(key))

    for key, victim, victim_tenant in ((tenant.management_key, theirs, other.id),
                                       (other.management_key, mine, tenant.id)):
        for r in attempts(key, victim, victim_tenant):
            err = error(r, 404)
            assert err["code"] == "not_found"
            assert victim["id"] not in r.text and victim_tenant not in r.text
        assert victim["id"] not in all_key_ids(http, key)

    # nothing happened to either key
    assert code(http, verifier_key, mine["key"]) == "VALID"
    assert code(http, verifier_key, theirs["key"]) == "VALID"
    # and an owner from another tenant cannot be named: to this tenant it does not exist
    err = error(http.post("/v1/keys", json={"name": "x", "owner_id": other.admin_id},
                          headers=auth(tenant.management_key)), 404)
    assert err["field"] == "owner_id"


def test_a_key_never_exceeds_its_owners_rights(http: httpx2.Client, tenant: Tenant,
                                               state: State) -> None:
    mk = tenant.management_key
    r = http.post("/v1/members", json={"email": "viewer@example.com", "role": "read_only"},
                  headers=auth(mk))
    assert r.status_code == 201, r.text
    viewer = r.json()["id"]
    r = http.post("/v1/service-accounts", json={"name": "API - Zapier", "role": "member"},
                  headers=auth(mk))
    assert r.status_code == 201, r.text
    member = r.json()["id"]
    before = state()
    for owner, scopes in ((viewer, ["contacts:write"]), (viewer, ["keys:write"]),
                          (member, ["keys:write"]), (member, ["members:write"]),
                          (member, ["tenant:write"])):
        err = error(http.post("/v1/keys", json={"name": "x", "owner_id": owner,
                                                "scopes": scopes}, headers=auth(mk)), 422)
        assert err["field"] == "scopes", (owner, scopes)
        assert scopes[0] in err["message"]
    assert state() == before
    ok = create_key(http, mk, name="viewer key", owner_id=viewer,
                    scopes=["contacts:read", "keys:read"])
    err = error(http.patch(f"/v1/keys/{ok['id']}", json={"scopes": ["contacts:write"]},
                           headers=auth(mk)), 422)
    assert err["field"] == "scopes"
    shown = http.get(f"/v1/keys/{ok['id']}", headers=auth(mk)).json()
    assert shown["scopes"] == ["contacts:read", "keys:read"]


# -- the URL, routes, logs ----------------------------------------------------------------------


# the test's own HTTP client logs the URLs it calls; the server's logs are what count
CLIENT_LOGGERS = ("httpx2", "httpcore2")



def test_credentials_in_the_url_are_refused_and_never_logged(
    http: httpx2.Client, tenant: Tenant, all_logs: pytest.LogCaptureFixture
) -> None:
    secret = tenant.management_key
    for path, param in (("/v1/keys", "api_key"), ("/v1/keys", "access_token"),
                        ("/v1/verify", "key"), ("/v1/keys", "API_KEY"),
                        ("/no/such/route", "apikey")):
        r = http.get(path, params={param: secret, "limit": 5})
        err = error(r, 400)
        assert err["code"] == "credential_in_url"
        assert secret not in r.text
    r = http.post("/v1/keys", params={"token": secret}, json={"name": "x"},
                  headers=auth(secret))
    assert error(r, 400)["code"] == "credential_in_url"
    assert state_is_untouched(http, secret)

    logged = "\n".join(
        f"{rec.name} {rec.getMessage()} {rec.args!r} {rec.__dict__!r}"
        for rec in all_logs.records
        if not rec.name.startswith(CLIENT_LOGGERS)
    )
    assert "credential in query string refused" in logged  # the refusal is logged ...
    assert secret not in logged and secret[3:] not in logged  # ... without the secret
    assert "/v1/keys" in logged  # the access log ran for these requests
    assert "api_key" not in logged.lower()  # not even the query string

    # a URL cannot forge log lines either
    all_logs.clear()
    r = http.get("/v1/keys%0A2026-01-01%20INFO%20forged", headers=auth(secret))
    assert r.status_code == 404

    def access_lines() -> list[str]:
        return [rec.getMessage() for rec in all_logs.records if rec.name == "keyplane.access"]

    # the server writes its access line after the response has left: wait for it (once, in a
    # full run, the client read the 404 before the server's thread had logged it)
    deadline = time.monotonic() + 5
    while not access_lines() and time.monotonic() < deadline:
        time.sleep(0.02)
    access = access_lines()
    assert access and all("\n" not in line for line in access)
    assert any("forged" in line for line in access)


def state_is_untouched(http: httpx2.Client, key: str) -> bool:
    items = http.get("/v1/keys", headers=auth(key)).json()["items"]
    return [k["name"] for k in items] == ["ops"]


def test_unknown_routes_and_methods_get_the_envelope(http: httpx2.Client,
                                                     tenant: Tenant) -> None:
    err = error(http.get("/v1/nothing-here", headers=auth(tenant.management_key)), 404)
    assert err["code"] == "not_found"
    err = error(http.get("/nothing"), 404)
    assert err["code"] == "not_found"
    err = error(http.put("/v1/keys", json={}, headers=auth(tenant.management_key)), 405)
    assert err["code"] == "method_not_allowed"
    # limits on the query string name the parameter too
    err = error(http.get("/v1/keys", params={"limit": 0}, headers=auth(tenant.management_key)),
                422)
    assert err["field"] == "limit"
    err = error(http.get("/v1/keys", params={"enabled": "maybe"},
                         headers=auth(tenant.management_key)), 422)
    assert err["field"] == "enabled"
