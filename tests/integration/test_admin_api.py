"""Tenants, members, service accounts, groups, the scope catalogue and the audit log over real
HTTP, and how changing an owner narrows or stops its keys on the next verify."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx2

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.helpers import code, create_key, when


def ok(r: httpx2.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json() if r.content else None


def err(r: httpx2.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    out: dict[str, Any] = r.json()["error"]
    return out


# -- tenants ------------------------------------------------------------------------------


def test_tenants_are_the_operators(http: httpx2.Client, tenant: Tenant, operator_key: str,
                                   verifier_key: str) -> None:
    op, mk = auth(operator_key), auth(tenant.management_key)
    globex = ok(http.post("/v1/tenants", json={
        "name": "Globex", "policy": {"default_expiry_days": 30, "max_expiry_days": 60,
                                     "require_tls_default": False}}, headers=op), 201)
    assert globex["id"].startswith("loc_") and globex["name"] == "Globex"
    assert globex["policy"] == {"default_expiry_days": 30, "max_expiry_days": 60,
                                "allow_non_expiring": False, "allowed_ips": [],
                                "require_tls_default": False, "leaked_key_action": "revoke",
                                "revoke_unused_after_days": None,
                                "api_users_need_group": True, "audit_retention_days": None,
                                "require_admin_two_factor": False}
    initech = ok(http.post("/v1/tenants", json={"name": "Initech"}, headers=op), 201)
    assert initech["policy"]["default_expiry_days"] == 90
    assert initech["policy"]["require_tls_default"] is True

    # a tenant key can neither create nor list tenants, nor see another one
    assert err(http.post("/v1/tenants", json={"name": "Mine"}, headers=mk), 403)["code"] == (
        "insufficient_scope")
    assert err(http.get("/v1/tenants", headers=mk), 403)["code"] == "insufficient_scope"
    assert err(http.get(f"/v1/tenants/{globex['id']}", headers=mk), 404)["code"] == "not_found"
    own = ok(http.get(f"/v1/tenants/{tenant.id}", headers=mk))
    assert own["id"] == tenant.id and own["name"] == "Acme"

    # the operator lists every tenant, page by page
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = ok(http.get("/v1/tenants", params=params, headers=op))
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted({tenant.id, globex["id"], initech["id"]})
    assert len(seen) == 3
    assert ok(http.get(f"/v1/tenants/{globex['id']}", headers=op)) == globex

    # the policy shapes new keys: the operator names the tenant and an owner
    svc = ok(http.post("/v1/service-accounts", params={"tenant_id": globex["id"]},
                       json={"name": "API - sync", "role": "admin"}, headers=op), 201)
    r = http.post("/v1/keys", params={"tenant_id": globex["id"]},
                  json={"name": "sync", "owner_id": svc["id"]}, headers=op)
    key = ok(r, 201)
    assert when(key["expires_at"]) - when(key["created_at"]) == timedelta(days=30)
    assert key["require_tls"] is False
    r = http.post("/v1/keys", params={"tenant_id": globex["id"]},
                  json={"name": "long", "owner_id": svc["id"], "expires_in_days": 61},
                  headers=op)
    assert err(r, 422)["field"] == "expires_in_days"

    # the operator changes a policy: a tenant-wide allowlist applies at once
    patched = ok(http.patch(f"/v1/tenants/{globex['id']}",
                            json={"name": "Globex Corp",
                                  "policy": {"allowed_ips": ["203.0.113.0/24"]}}, headers=op))
    assert patched["name"] == "Globex Corp"
    assert patched["policy"]["allowed_ips"] == ["203.0.113.0/24"]
    assert patched["policy"]["default_expiry_days"] == 30  # untouched
    assert code(http, verifier_key, key["key"], ip="198.51.100.1") == "IP_NOT_ALLOWED"
    assert code(http, verifier_key, key["key"], ip="203.0.113.1") == "VALID"

    # suspending a tenant is the operator's call, and stops its keys
    r = http.patch(f"/v1/tenants/{tenant.id}", json={"enabled": False}, headers=mk)
    assert err(r, 403)["code"] == "insufficient_scope"
    ok(http.patch(f"/v1/tenants/{globex['id']}", json={"enabled": False}, headers=op))
    assert code(http, verifier_key, key["key"], ip="203.0.113.1") == "DISABLED"
    ok(http.patch(f"/v1/tenants/{globex['id']}", json={"enabled": True}, headers=op))
    assert code(http, verifier_key, key["key"], ip="203.0.113.1") == "VALID"

    # a tenant admin edits its own policy (not its name's neighbours)
    mine = ok(http.patch(f"/v1/tenants/{tenant.id}",
                         json={"policy": {"default_expiry_days": 7}}, headers=mk))
    assert mine["policy"]["default_expiry_days"] == 7
    fresh = create_key(http, tenant.management_key)
    assert when(fresh["expires_at"]) - when(fresh["created_at"]) == timedelta(days=7)

    # bad tenant bodies name the field and create nothing
    for body, field in (({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 201}, "name"),
                        ({"name": "x", "policy": {"default_expiry_days": 0}},
                         "policy.default_expiry_days"),
                        ({"name": "x", "policy": {"allowed_ips": ["nope"]}}, "policy.allowed_ips"),
                        ({"name": "x", "policy": {"colour": 1}}, "policy.colour"),
                        ({"name": "x", "plan": "gold"}, "plan")):
        assert err(http.post("/v1/tenants", json=body, headers=op), 422)["field"] == field, body
    assert len(ok(http.get("/v1/tenants", params={"limit": 200}, headers=op))["items"]) == 3


# -- members, service accounts, groups ------------------------------------------------------


def test_members(http: httpx2.Client, tenant: Tenant) -> None:
    mk = auth(tenant.management_key)
    bob = ok(http.post("/v1/members", json={"email": "Bob@Example.com", "name": "Bob",
                                            "role": "member", "password": "a long passphrase"},
                       headers=mk), 201)
    assert bob["object"] == "member" and bob["email"] == "bob@example.com"
    assert bob["has_password"] is True and "password" not in bob and "password_hash" not in bob
    assert "passphrase" not in str(bob) and "argon" not in str(bob)
    listed = ok(http.get("/v1/members", headers=mk))["items"]
    assert {m["id"] for m in listed} == {tenant.admin_id, bob["id"]}
    assert ok(http.get(f"/v1/members/{bob['id']}", headers=mk)) == bob
    edited = ok(http.patch(f"/v1/members/{bob['id']}", json={"role": "read_only",
                                                             "name": "Robert"}, headers=mk))
    assert (edited["role"], edited["name"]) == ("read_only", "Robert")

    for body, field, status in (
        ({"email": "bob@example.com"}, "email", 409),
        ({"email": "not an email"}, "email", 422),
        ({"email": "c@example.com", "role": "owner"}, "role", 422),
        ({"email": "c@example.com", "password": "short"}, "password", 422),
        ({"email": "c@example.com", "group_ids": ["grp_nope"]}, "group_ids", 404),
        ({"email": "c@example.com", "licence": "api"}, "licence", 422),
    ):
        assert err(http.post("/v1/members", json=body, headers=mk), status)["field"] == field
    assert len(ok(http.get("/v1/members", headers=mk))["items"]) == 2

    ok(http.delete(f"/v1/members/{bob['id']}", headers=mk), 204)
    assert err(http.get(f"/v1/members/{bob['id']}", headers=mk), 404)["code"] == "not_found"


def test_service_accounts_and_groups(http: httpx2.Client, tenant: Tenant) -> None:
    mk = auth(tenant.management_key)
    sales = ok(http.post("/v1/groups", json={"name": "Sales", "description": "pipeline",
                                             "scopes": ["contacts:write", "opportunities:read"]},
                         headers=mk), 201)
    assert sales["scopes"] == ["contacts:write", "opportunities:read"]
    assert err(http.post("/v1/groups", json={"name": "Sales"}, headers=mk), 409)["field"] == (
        "name")
    r = http.post("/v1/groups", json={"name": "Admins", "scopes": ["keys:write"]}, headers=mk)
    assert err(r, 422)["field"] == "scopes"  # groups limit data, not management
    r = http.post("/v1/groups", json={"name": "Odd", "scopes": ["contacts:delete"]}, headers=mk)
    assert err(r, 422)["field"] == "scopes"

    svc = ok(http.post("/v1/service-accounts",
                       json={"name": "API - Zapier", "group_ids": [sales["id"]]}, headers=mk),
             201)
    assert svc["object"] == "service_account" and "email" not in svc
    assert svc["group_ids"] == [sales["id"]] and svc["role"] == "member"
    r = http.post("/v1/service-accounts", json={"name": "x", "email": "x@example.com"},
                  headers=mk)
    assert err(r, 422)["field"] == "email"  # service accounts never sign in
    r = http.patch(f"/v1/service-accounts/{svc['id']}", json={"password": "a long passphrase"},
                   headers=mk)
    assert err(r, 422)["field"] == "password"
    # a service account is not a member, and the other way round
    assert err(http.get(f"/v1/members/{svc['id']}", headers=mk), 404)["code"] == "not_found"
    r = http.get(f"/v1/service-accounts/{tenant.admin_id}", headers=mk)
    assert err(r, 404)["code"] == "not_found"
    listed = ok(http.get("/v1/service-accounts", headers=mk))["items"]
    assert [s["id"] for s in listed] == [svc["id"]]

    assert ok(http.get(f"/v1/groups/{sales['id']}", headers=mk)) == sales
    renamed = ok(http.patch(f"/v1/groups/{sales['id']}", json={"name": "Sales EU"},
                            headers=mk))
    assert renamed["name"] == "Sales EU"
    assert [g["name"] for g in ok(http.get("/v1/groups", headers=mk))["items"]] == ["Sales EU"]
    # a group with members cannot go (that would widen their access)
    assert err(http.delete(f"/v1/groups/{sales['id']}", headers=mk), 409)["code"] == "conflict"
    ok(http.patch(f"/v1/service-accounts/{svc['id']}", json={"group_ids": []}, headers=mk))
    ok(http.delete(f"/v1/groups/{sales['id']}", headers=mk), 204)
    assert ok(http.get("/v1/groups", headers=mk))["items"] == []
    ok(http.delete(f"/v1/service-accounts/{svc['id']}", headers=mk), 204)
    assert ok(http.get("/v1/service-accounts", headers=mk))["items"] == []


def test_members_and_groups_are_isolated_between_tenants(http: httpx2.Client, tenant: Tenant,
                                                         keyplane: Keyplane) -> None:
    other = make_tenant(keyplane, "Globex")
    mine, theirs = auth(tenant.management_key), auth(other.management_key)
    group = ok(http.post("/v1/groups", json={"name": "Sales", "scopes": ["contacts:read"]},
                         headers=theirs), 201)
    svc = ok(http.post("/v1/service-accounts", json={"name": "API - theirs"}, headers=theirs),
             201)
    for method, path, body in (
        ("GET", f"/v1/members/{other.admin_id}", None),
        ("PATCH", f"/v1/members/{other.admin_id}", {"role": "read_only"}),
        ("DELETE", f"/v1/members/{other.admin_id}", None),
        ("GET", f"/v1/service-accounts/{svc['id']}", None),
        ("PATCH", f"/v1/service-accounts/{svc['id']}", {"enabled": False}),
        ("DELETE", f"/v1/service-accounts/{svc['id']}", None),
        ("GET", f"/v1/groups/{group['id']}", None),
        ("PATCH", f"/v1/groups/{group['id']}", {"scopes": []}),
        ("DELETE", f"/v1/groups/{group['id']}", None),
        ("GET", "/v1/members", {"tenant_id": other.id}),
    ):
        if method == "GET" and body:
            r = http.get(path, params=body, headers=mine)
        else:
            r = http.request(method, path, json=body, headers=mine)
        assert err(r, 404)["code"] == "not_found", (method, path)
    # nor can another tenant's group be joined: to this tenant it does not exist
    r = http.post("/v1/service-accounts", json={"name": "x", "group_ids": [group["id"]]},
                  headers=mine)
    assert err(r, 404)["field"] == "group_ids"
    assert [m["id"] for m in ok(http.get("/v1/members", headers=mine))["items"]] == [
        tenant.admin_id]
    assert ok(http.get("/v1/service-accounts", headers=mine))["items"] == []
    # and nothing of theirs changed
    assert ok(http.get(f"/v1/members/{other.admin_id}", headers=theirs))["role"] == "admin"
    assert ok(http.get(f"/v1/service-accounts/{svc['id']}", headers=theirs))["enabled"]
    assert ok(http.get(f"/v1/groups/{group['id']}", headers=theirs))["scopes"] == [
        "contacts:read"]


# -- owners narrow their keys at once -------------------------------------------------------


def test_demoting_disabling_and_removing_an_owner(http: httpx2.Client, tenant: Tenant,
                                                  verifier_key: str) -> None:
    mk = auth(tenant.management_key)
    carol = ok(http.post("/v1/members", json={"email": "carol@example.com", "role": "admin"},
                         headers=mk), 201)
    key = create_key(http, tenant.management_key, name="carol's", owner_id=carol["id"],
                     scopes=["contacts:write", "keys:write"], require_tls=False)
    secret, url = key["key"], f"/v1/members/{carol['id']}"
    assert code(http, verifier_key, secret, scopes=["contacts:write", "keys:write"]) == "VALID"
    ok(http.get("/v1/keys", headers=auth(secret)))  # it manages keys, for now
    assert ok(http.post("/v1/keys", json={"name": "by carol's key"}, headers=auth(secret)),
              201)

    ok(http.patch(url, json={"role": "member"}, headers=mk))
    assert code(http, verifier_key, secret, scopes=["contacts:write"]) == "VALID"
    assert code(http, verifier_key, secret, scopes=["keys:write"]) == "INSUFFICIENT_SCOPE"
    r = http.post("/v1/keys", json={"name": "not any more"}, headers=auth(secret))
    assert err(r, 403)["code"] == "insufficient_scope"

    ok(http.patch(url, json={"role": "read_only"}, headers=mk))
    assert code(http, verifier_key, secret, scopes=["contacts:write"]) == "INSUFFICIENT_SCOPE"
    assert code(http, verifier_key, secret, scopes=["contacts:read"]) == "VALID"
    assert verify_scopes(http, verifier_key, secret) == ["contacts:read", "keys:read"]

    ok(http.patch(url, json={"enabled": False}, headers=mk))
    assert code(http, verifier_key, secret) == "DISABLED"
    assert err(http.get("/v1/keys", headers=auth(secret)), 401)["code"] == "invalid_credential"
    ok(http.patch(url, json={"enabled": True}, headers=mk))
    assert code(http, verifier_key, secret, scopes=["contacts:read"]) == "VALID"

    ok(http.delete(url, headers=mk), 204)
    assert code(http, verifier_key, secret) == "REVOKED"
    assert err(http.get(f"/v1/keys/{key['id']}", headers=mk), 404)["code"] == "not_found"


def test_group_membership_narrows_keys(http: httpx2.Client, tenant: Tenant,
                                       verifier_key: str) -> None:
    mk = auth(tenant.management_key)
    wide = ok(http.post("/v1/groups", json={"name": "Calendars and contacts",
                                            "scopes": ["calendars:write", "contacts:write"]},
                        headers=mk), 201)
    svc = ok(http.post("/v1/service-accounts", json={"name": "API - Zapier",
                                                     "group_ids": [wide["id"]]},
                       headers=mk), 201)
    key = create_key(http, tenant.management_key, owner_id=svc["id"],
                     scopes=["calendars:read", "contacts:write"])
    secret = key["key"]
    assert verify_scopes(http, verifier_key, secret) == [
        "calendars:read", "contacts:read", "contacts:write"]

    group = ok(http.post("/v1/groups", json={"name": "Contacts only",
                                             "scopes": ["contacts:read"]}, headers=mk), 201)
    ok(http.patch(f"/v1/service-accounts/{svc['id']}", json={"group_ids": [group["id"]]},
                  headers=mk))
    assert verify_scopes(http, verifier_key, secret) == ["contacts:read"]
    assert code(http, verifier_key, secret, scopes=["contacts:write"]) == "INSUFFICIENT_SCOPE"
    assert code(http, verifier_key, secret, scopes=["calendars:read"]) == "INSUFFICIENT_SCOPE"

    # widening the group widens the key, up to the key's own scopes
    ok(http.patch(f"/v1/groups/{group['id']}", json={"scopes": ["calendars:write",
                                                                "contacts:write"]}, headers=mk))
    assert verify_scopes(http, verifier_key, secret) == [
        "calendars:read", "contacts:read", "contacts:write"]
    # and a new key for this owner cannot ask beyond the group
    r = http.post("/v1/keys", json={"name": "x", "owner_id": svc["id"],
                                    "scopes": ["payments:read"]}, headers=mk)
    assert err(r, 422)["field"] == "scopes"


def verify_scopes(http: httpx2.Client, verifier: str, secret: str) -> list[str]:
    r = http.post("/v1/verify", json={"key": secret, "tls": True}, headers=auth(verifier))
    body = ok(r)
    assert body["valid"] is True, body
    return list(body["scopes"])


# -- the scope catalogue ------------------------------------------------------------------------


def test_scope_catalogue(http: httpx2.Client, tenant: Tenant, operator_key: str,
                         verifier_key: str) -> None:
    op, mk = auth(operator_key), auth(tenant.management_key)
    names = {s["name"] for s in ok(http.get("/v1/scopes", headers=mk))["items"]}
    for area in ("contacts", "calendars", "conversations", "opportunities", "forms",
                 "payments"):
        assert {f"{area}:read", f"{area}:write"} <= names
    assert {"keys:read", "keys:write", "keys:verify"} <= names
    assert err(http.get("/v1/scopes"), 401)["code"] == "unauthenticated"
    data_key = create_key(http, tenant.management_key, scopes=["contacts:read"],
                          require_tls=False)
    assert ok(http.get("/v1/scopes", headers=auth(data_key["key"])))["items"]  # anyone

    # only the operator edits it
    r = http.put("/v1/scopes/invoices:read", json={"description": "View invoices"}, headers=mk)
    assert err(r, 403)["code"] == "insufficient_scope"
    saved = ok(http.put("/v1/scopes/invoices:read", json={"description": "View invoices"},
                        headers=op))
    assert saved == {"name": "invoices:read", "description": "View invoices"}
    listed = ok(http.get("/v1/scopes", headers=mk))["items"]
    assert {"name": "invoices:read", "description": "View invoices"} in listed

    # the management key predates the new scope, so it cannot grant it; the operator can
    r = http.post("/v1/keys", json={"name": "books", "scopes": ["invoices:read"]}, headers=mk)
    assert err(r, 403)["field"] == "scopes"
    key = create_key(http, operator_key, f"/v1/keys?tenant_id={tenant.id}",
                     scopes=["invoices:read"], owner_id=tenant.admin_id)
    assert code(http, verifier_key, key["key"], scopes=["invoices:read"]) == "VALID"

    # removing it takes it away from every key at once, and refuses it for new ones
    assert err(http.delete("/v1/scopes/invoices:read", headers=mk), 403)["code"] == (
        "insufficient_scope")
    ok(http.delete("/v1/scopes/invoices:read", headers=op), 204)
    assert code(http, verifier_key, key["key"], scopes=["invoices:read"]) == (
        "INSUFFICIENT_SCOPE")
    r = http.post("/v1/keys", json={"name": "x", "scopes": ["invoices:read"]}, headers=mk)
    assert err(r, 422)["field"] == "scopes"
    assert err(http.delete("/v1/scopes/invoices:read", headers=op), 404)["code"] == "not_found"
    assert err(http.delete("/v1/scopes/keys:write", headers=op), 409)["code"] == "conflict"
    r = http.put("/v1/scopes/Invoices", json={"description": "x"}, headers=op)
    assert err(r, 422)["field"] == "name"
    r = http.put("/v1/scopes/invoices:read", json={"description": ""}, headers=op)
    assert err(r, 422)["field"] == "description"


# -- the audit log ------------------------------------------------------------------------------


def test_audit_events(http: httpx2.Client, tenant: Tenant, operator_key: str) -> None:
    mk = auth(tenant.management_key)
    key = create_key(http, tenant.management_key, name="audited")
    ok(http.patch(f"/v1/keys/{key['id']}", json={"enabled": False}, headers=mk))
    ok(http.post(f"/v1/keys/{key['id']}/rotate", json={"grace_period_seconds": 0},
                 headers=mk))
    ok(http.delete(f"/v1/keys/{key['id']}", headers=mk), 204)

    events = ok(http.get("/v1/audit-events", headers=mk))["items"]
    about_key = [e for e in events if e["target"] == key["id"]]
    assert [e["action"] for e in about_key] == [
        "key.revoked", "key.rotated", "key.locked", "key.created"]  # newest first
    ops_id = ok(http.get("/v1/keys", params={"q": "ops"}, headers=mk))["items"][0]["id"]
    for e in about_key:
        assert e["actor"] == f"key:{ops_id}"
        assert e["tenant_id"] == tenant.id
        assert e["outcome"] == "success"
        assert e["ip"] == "127.0.0.1"
        assert e["request_id"]
    rotated = ok(http.get("/v1/audit-events", params={"action": "key.rotated"}, headers=mk))
    assert [e["target"] for e in rotated["items"]] == [key["id"]]
    assert rotated["items"][0]["details"]["grace_period_seconds"] == 0

    page = ok(http.get("/v1/audit-events", params={"limit": 2}, headers=mk))
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = ok(http.get("/v1/audit-events", params={"limit": 200, "cursor": page["next_cursor"]},
                       headers=mk))
    assert [e["id"] for e in page["items"] + rest["items"]] == [e["id"] for e in events]

    # the operator sees every tenant's events; a tenant only its own
    ok(http.post("/v1/tenants", json={"name": "Other"}, headers=auth(operator_key)), 201)
    everything = ok(http.get("/v1/audit-events", params={"limit": 200},
                             headers=auth(operator_key)))["items"]
    assert {e["id"] for e in events} < {e["id"] for e in everything}
    created = [e for e in everything if e["action"] == "tenant.created"]
    assert any(e["tenant_id"] != tenant.id for e in created)
    assert all(e["tenant_id"] == tenant.id for e in ok(
        http.get("/v1/audit-events", params={"limit": 200}, headers=mk))["items"])


# -- the API describes itself -----------------------------------------------------------------


def test_openapi_and_docs(http: httpx2.Client) -> None:
    doc = ok(http.get("/openapi.json"))
    paths = set(doc["paths"])
    for path in ("/v1/keys", "/v1/keys/{key_id}", "/v1/keys/{key_id}/rotate",
                 "/v1/keys/{key_id}/duplicate", "/v1/verify", "/v1/operator/keys",
                 "/v1/tenants", "/v1/tenants/{tenant_id}", "/v1/members",
                 "/v1/service-accounts", "/v1/groups", "/v1/scopes", "/v1/scopes/{name}",
                 "/v1/audit-events"):
        assert path in paths, path
    assert set(doc["paths"]["/v1/keys/{key_id}"]) >= {"get", "patch", "delete"}
    create = doc["paths"]["/v1/keys"]["post"]
    assert "201" in create["responses"]
    r = http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text and "swagger" in r.text.lower()
