"""The whole API-key lifecycle over real HTTP, as a tenant admin's management key, and every
answer ``POST /v1/verify`` can give. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.helpers import all_key_ids, code, create_key, verify, when
from tests.support import SettableClock

# -- create -------------------------------------------------------------------------------


def test_create_returns_the_secret_once_with_the_documented_defaults(
    http: httpx2.Client, tenant: Tenant, verifier_key: str, clock: SettableClock
) -> None:
    r = http.post("/v1/keys", json={"name": "Zapier", "scopes": ["contacts:write"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["key"]

    assert tokens.parse(secret) is not None
    assert secret.startswith("kp_")
    assert created["prefix"] == "kp"
    assert created["start"] == secret[len("kp_"):][:8]
    assert created["tenant_id"] == tenant.id
    assert created["owner_id"] == tenant.admin_id  # default: the caller's owner
    ops = http.get("/v1/keys", params={"q": "ops"}, headers=auth(tenant.management_key))
    assert created["created_by"] == f"key:{ops.json()['items'][0]['id']}"
    assert created["require_tls"] is True
    assert created["enabled"] is True
    assert created["scopes"] == ["contacts:write"]
    assert when(created["created_at"]) == clock.now()
    assert when(created["expires_at"]) - when(created["created_at"]) == timedelta(days=90)
    assert created["last_used_at"] is None

    # never again: not in show, not in the listing
    shown = http.get(f"/v1/keys/{created['id']}", headers=auth(tenant.management_key))
    assert shown.status_code == 200
    assert "key" not in shown.json()
    assert secret not in shown.text and secret[3:] not in shown.text
    listing = http.get("/v1/keys", headers=auth(tenant.management_key))
    assert created["id"] in [k["id"] for k in listing.json()["items"]]
    assert all("key" not in k for k in listing.json()["items"])
    assert secret[3:] not in listing.text
    assert shown.json() == {k: v for k, v in created.items() if k not in ("key", "note")}
    assert created["note"].startswith("Copy this key now: it will not be shown again")

    answer = verify(http, verifier_key, secret, scopes=["contacts:read"])
    assert answer["valid"] is True and answer["code"] == "VALID"
    assert answer["key_id"] == created["id"]
    assert answer["tenant_id"] == tenant.id
    assert answer["owner_id"] == tenant.admin_id
    assert answer["scopes"] == ["contacts:read", "contacts:write"]  # write implies read
    assert answer["expires_at"] == created["expires_at"]


def test_each_create_field_is_stored(http: httpx2.Client, tenant: Tenant) -> None:
    created = create_key(
        http, tenant.management_key, name="Partner", description="for the CRM sync",
        scopes=["calendars:read", "contacts:read"], expires_in_days=30,
        allowed_ips=["203.0.113.0/24", "2001:db8::/32"], require_tls=False,
        ratelimit={"limit": 100, "window_seconds": 60}, meta={"team": "ops", "n": 1},
    )
    shown = http.get(f"/v1/keys/{created['id']}", headers=auth(tenant.management_key)).json()
    assert shown["name"] == "Partner"
    assert shown["description"] == "for the CRM sync"
    assert shown["scopes"] == ["calendars:read", "contacts:read"]
    assert when(shown["expires_at"]) - when(shown["created_at"]) == timedelta(days=30)
    assert shown["allowed_ips"] == ["203.0.113.0/24", "2001:db8::/32"]
    assert shown["require_tls"] is False
    assert shown["ratelimit"] == {"limit": 100, "window_seconds": 60}
    assert shown["meta"] == {"team": "ops", "n": 1}


# -- list -----------------------------------------------------------------------------------


def test_list_walks_every_page_once(http: httpx2.Client, tenant: Tenant) -> None:
    made = {create_key(http, tenant.management_key, name=f"k{i}")["id"] for i in range(7)}
    everything = made | set(all_key_ids(http, tenant.management_key))  # + the "ops" key
    assert len(everything) == 8

    for page_size in (3, 4):  # 8 keys: pages of 3+3+2, and exactly 4+4 (no empty third page)
        seen: list[str] = []
        pages = 0
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            r = http.get("/v1/keys", params=params, headers=auth(tenant.management_key))
            assert r.status_code == 200, r.text
            page = r.json()
            assert 0 < len(page["items"]) <= page_size
            seen += [k["id"] for k in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages < 10
        assert len(seen) == len(set(seen)) == 8  # no duplicates, nothing missing
        assert set(seen) == everything
        assert pages == -(-8 // page_size)
        assert seen == sorted(seen, reverse=True)  # newest first


def test_list_filters(http: httpx2.Client, tenant: Tenant) -> None:
    mk = tenant.management_key
    r = http.post("/v1/groups", json={"name": "Readers", "scopes": ["contacts:read"]},
                  headers=auth(mk))
    r = http.post("/v1/service-accounts", json={"name": "API - Zapier",
                                                "group_ids": [r.json()["id"]]}, headers=auth(mk))
    assert r.status_code == 201, r.text
    svc = r.json()["id"]
    mine = create_key(http, mk, name="Billing export", description="nightly job")
    theirs = [create_key(http, mk, name=f"zap {i}", owner_id=svc, scopes=["contacts:read"])
              for i in range(2)]
    locked = create_key(http, mk, name="old integration")
    assert http.patch(f"/v1/keys/{locked['id']}", json={"enabled": False},
                      headers=auth(mk)).status_code == 200

    def ids(**params: str) -> set[str]:
        r = http.get("/v1/keys", params=params, headers=auth(mk))
        assert r.status_code == 200, r.text
        return {k["id"] for k in r.json()["items"]}

    assert ids(owner_id=svc) == {k["id"] for k in theirs}
    assert ids(enabled="false") == {locked["id"]}
    assert locked["id"] not in ids(enabled="true")
    assert mine["id"] in ids(enabled="true")
    assert ids(q="BILLING") == {mine["id"]}  # case-insensitive, name
    assert ids(q="nightly") == {mine["id"]}  # description
    assert ids(q=mine["start"]) == {mine["id"]}  # the displayed start
    assert ids(q="%") == set()  # LIKE wildcards are literal
    assert ids(q="_") == set()
    assert ids(owner_id=svc, q="zap 1") == {theirs[1]["id"]}


# -- edit, lock, unlock -------------------------------------------------------------------


def test_patch_each_editable_field_takes_effect(
    http: httpx2.Client, tenant: Tenant, verifier_key: str, clock: SettableClock
) -> None:
    mk = tenant.management_key
    created = create_key(http, mk, name="before", scopes=["contacts:read"])
    secret, url = created["key"], f"/v1/keys/{created['id']}"
    assert code(http, verifier_key, secret, scopes=["contacts:read"]) == "VALID"
    clock.advance(seconds=5)

    def patch(**body: object) -> dict[str, object]:
        r = http.patch(url, json=body, headers=auth(mk))
        assert r.status_code == 200, r.text
        assert "key" not in r.json()
        out: dict[str, object] = r.json()
        shown = http.get(url, headers=auth(mk)).json()
        # last_used_at moves on its own (usage is flushed in the background)
        assert {**out, "last_used_at": None} == {**shown, "last_used_at": None}
        return out

    assert patch(name="after")["name"] == "after"
    assert verify(http, verifier_key, secret)["name"] == "after"
    assert patch(description="now described")["description"] == "now described"

    assert patch(scopes=["calendars:write"])["scopes"] == ["calendars:write"]
    assert code(http, verifier_key, secret, scopes=["contacts:read"]) == "INSUFFICIENT_SCOPE"
    assert code(http, verifier_key, secret, scopes=["calendars:read"]) == "VALID"

    assert patch(allowed_ips=["198.51.100.0/24"])["allowed_ips"] == ["198.51.100.0/24"]
    assert code(http, verifier_key, secret, ip="203.0.113.9") == "IP_NOT_ALLOWED"
    assert code(http, verifier_key, secret, ip="198.51.100.7") == "VALID"
    assert patch(allowed_ips=[])["allowed_ips"] == []
    assert code(http, verifier_key, secret, ip="203.0.113.9") == "VALID"

    assert code(http, verifier_key, secret, tls=False) == "TLS_REQUIRED"
    assert patch(require_tls=False)["require_tls"] is False
    assert code(http, verifier_key, secret, tls=False) == "VALID"

    out = patch(ratelimit={"limit": 5, "window_seconds": 10})
    assert out["ratelimit"] == {"limit": 5, "window_seconds": 10}
    assert patch(ratelimit=None)["ratelimit"] is None

    assert patch(meta={"owner": "crm"})["meta"] == {"owner": "crm"}

    out = patch(enabled=False)
    assert out["enabled"] is False
    assert code(http, verifier_key, secret) == "DISABLED"
    out = patch(enabled=True)
    assert out["enabled"] is True
    assert code(http, verifier_key, secret) == "VALID"

    assert when(str(out["updated_at"])) == clock.now() > when(created["created_at"])
    assert out["created_at"] == created["created_at"]


# -- duplicate --------------------------------------------------------------------------------


def test_duplicate_keeps_the_settings_with_a_new_name_and_secret(
    http: httpx2.Client, tenant: Tenant, verifier_key: str
) -> None:
    mk = tenant.management_key
    source = create_key(
        http, mk, name="Zapier", description="sync", scopes=["contacts:write", "forms:read"],
        expires_in_days=30, allowed_ips=["203.0.113.0/24"], require_tls=False,
        ratelimit={"limit": 10, "window_seconds": 60}, meta={"tool": "zapier"}, remaining=500,
    )
    r = http.post(f"/v1/keys/{source['id']}/duplicate", json={"name": "Zapier 2"},
                  headers=auth(mk))
    assert r.status_code == 201, r.text
    copy = r.json()
    assert copy["id"] != source["id"]
    assert copy["name"] == "Zapier 2"
    assert copy["key"] != source["key"] and tokens.parse(copy["key"]) is not None
    assert copy["start"] == copy["key"][3:11]
    for field in ("description", "scopes", "allowed_ips", "require_tls", "ratelimit", "meta",
                  "owner_id", "tenant_id", "enabled", "remaining"):
        assert copy[field] == source[field], field
    assert copy["remaining"] == 500  # the usage quota too
    assert "not be shown again" in copy["note"] and "not be shown again" in source["note"]
    assert when(copy["expires_at"]) - when(copy["created_at"]) == timedelta(days=30)

    for secret in (source["key"], copy["key"]):
        answer = verify(http, verifier_key, secret, ip="203.0.113.4", tls=False)
        assert answer["code"] == "VALID"
    assert verify(http, verifier_key, copy["key"], ip="203.0.113.4")["key_id"] == copy["id"]

    # no name: "<name> (copy)"
    r = http.post(f"/v1/keys/{source['id']}/duplicate", headers=auth(mk))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "Zapier (copy)"


# -- rotate -----------------------------------------------------------------------------------


def test_rotate_with_the_default_grace(http: httpx2.Client, tenant: Tenant, verifier_key: str,
                                       clock: SettableClock) -> None:
    mk = tenant.management_key
    created = create_key(http, mk, scopes=["contacts:read"], allowed_ips=["203.0.113.0/24"],
                         meta={"a": 1})
    old = created["key"]
    r = http.post(f"/v1/keys/{created['id']}/rotate", headers=auth(mk))
    assert r.status_code == 200, r.text
    rotated = r.json()
    new = rotated["key"]
    assert new != old and tokens.parse(new) is not None
    assert rotated["id"] == created["id"]
    assert rotated["start"] == new[3:11]
    for field in ("name", "scopes", "allowed_ips", "meta", "owner_id", "require_tls"):
        assert rotated[field] == created[field], field
    assert when(rotated["previous_secret_expires_at"]) == clock.now() + timedelta(days=7)
    shown = http.get(f"/v1/keys/{created['id']}", headers=auth(mk)).json()
    assert shown["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
    assert "key" not in shown and "note" not in shown
    assert rotated["note"] == created["note"] and "not be shown again" in rotated["note"]

    for secret in (old, new):
        answer = verify(http, verifier_key, secret, scopes=["contacts:read"], ip="203.0.113.1")
        assert answer["code"] == "VALID" and answer["key_id"] == created["id"]

    clock.advance(days=7, seconds=-1)
    assert code(http, verifier_key, old, ip="203.0.113.1") == "VALID"
    clock.advance(seconds=1)  # the grace ends exactly here
    assert code(http, verifier_key, old, ip="203.0.113.1") == "EXPIRED"
    assert code(http, verifier_key, new, ip="203.0.113.1") == "VALID"


def test_rotate_with_no_grace_kills_the_old_secret_at_once(
    http: httpx2.Client, tenant: Tenant, verifier_key: str
) -> None:
    mk = tenant.management_key
    created = create_key(http, mk)
    old = created["key"]
    assert code(http, verifier_key, old) == "VALID"  # now cached by the server
    r = http.post(f"/v1/keys/{created['id']}/rotate", json={"grace_period_seconds": 0},
                  headers=auth(mk))
    assert r.status_code == 200, r.text
    assert r.json()["previous_secret_expires_at"] is None
    # the old secret no longer exists at all (pinned: NOT_FOUND, like any unknown key)
    answer = verify(http, verifier_key, old)
    assert answer["valid"] is False and answer["code"] == "NOT_FOUND"
    assert code(http, verifier_key, r.json()["key"]) == "VALID"


def test_a_second_rotation_ends_the_first_grace(http: httpx2.Client, tenant: Tenant,
                                                verifier_key: str) -> None:
    mk = tenant.management_key
    created = create_key(http, mk)
    first = created["key"]
    second = http.post(f"/v1/keys/{created['id']}/rotate", headers=auth(mk)).json()["key"]
    third = http.post(f"/v1/keys/{created['id']}/rotate", headers=auth(mk)).json()["key"]
    # at most two secrets at any time: the oldest dies, the previous one keeps its grace
    assert code(http, verifier_key, first) == "NOT_FOUND"
    assert code(http, verifier_key, second) == "VALID"
    assert code(http, verifier_key, third) == "VALID"


def test_concurrent_rotations_leave_at_most_two_secrets(http: httpx2.Client, tenant: Tenant,
                                                       verifier_key: str) -> None:
    mk = tenant.management_key
    created = create_key(http, mk)

    def rotate(_: int) -> httpx2.Response:
        with httpx2.Client(base_url=str(http.base_url), timeout=30) as own:
            return own.post(f"/v1/keys/{created['id']}/rotate", headers=auth(mk))

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(rotate, range(8)))
    # a rotation overtaken by another while it waited is refused (409), never a lost update
    assert {r.status_code for r in answers} <= {200, 409}, [r.text for r in answers]
    won = [r for r in answers if r.status_code == 200]
    assert won
    issued = [created["key"]] + [r.json()["key"] for r in won]
    valid = [s for s in issued if code(http, verifier_key, s) == "VALID"]
    assert len(valid) == 2  # the newest secret and the one it replaced, nothing older
    shown = http.get(f"/v1/keys/{created['id']}", headers=auth(mk)).json()
    assert {s[3:11] for s in valid} >= {shown["start"]}


def test_grace_never_outlives_the_keys_own_expiry(http: httpx2.Client, tenant: Tenant,
                                                  verifier_key: str,
                                                  clock: SettableClock) -> None:
    mk = tenant.management_key
    created = create_key(http, mk, expires_in_days=1)
    clock.advance(hours=12)
    r = http.post(f"/v1/keys/{created['id']}/rotate", json={"grace_period_seconds": 3 * 86400},
                  headers=auth(mk))
    assert r.status_code == 200, r.text
    assert r.json()["previous_secret_expires_at"] == created["expires_at"]
    # the new secret gets the key's lifetime again, from the rotation
    assert when(r.json()["expires_at"]) == clock.now() + timedelta(days=1)
    new = r.json()["key"]
    clock.advance(hours=11, minutes=59)
    assert code(http, verifier_key, created["key"]) == "VALID"
    clock.advance(minutes=1)  # the old secret's deadline: the key's original expiry
    assert code(http, verifier_key, created["key"]) == "EXPIRED"
    assert code(http, verifier_key, new) == "VALID"


# -- delete ---------------------------------------------------------------------------------


def test_delete_is_immediate_and_irreversible(http: httpx2.Client, tenant: Tenant,
                                              verifier_key: str) -> None:
    mk = tenant.management_key
    created = create_key(http, mk)
    url = f"/v1/keys/{created['id']}"
    assert code(http, verifier_key, created["key"]) == "VALID"  # cached before the delete
    r = http.delete(url, headers=auth(mk))
    assert r.status_code == 204 and r.content == b""
    answer = verify(http, verifier_key, created["key"])
    assert answer["valid"] is False and answer["code"] == "REVOKED"
    assert answer["scopes"] == []
    assert http.get(url, headers=auth(mk)).status_code == 404
    assert http.get(url, headers=auth(mk)).json()["error"]["code"] == "not_found"
    assert http.delete(url, headers=auth(mk)).status_code == 404
    assert http.patch(url, json={"enabled": True}, headers=auth(mk)).status_code == 404
    assert http.post(url + "/rotate", headers=auth(mk)).status_code == 404
    assert http.post(url + "/duplicate", headers=auth(mk)).status_code == 404
    assert created["id"] not in all_key_ids(http, mk)
    assert code(http, verifier_key, created["key"]) == "REVOKED"


# -- verify -----------------------------------------------------------------------------------


def test_verify_malformed_and_unknown(http: httpx2.Client, tenant: Tenant,
                                      verifier_key: str) -> None:
    good = create_key(http, tenant.management_key)["key"]
    last = good[-1]
    typo = good[:-1] + ("A" if last != "A" else "B")
    for raw in ("hello", secrets.token_urlsafe(30), typo, good.replace("kp_", "zz_", 1),
                good + "x", ""):
        answer = verify(http, verifier_key, raw)
        assert (answer["valid"], answer["code"]) == (False, "MALFORMED"), raw
        assert answer["key_id"] is None and answer["tenant_id"] is None
    unknown = verify(http, verifier_key, tokens.generate("kp"))
    assert (unknown["valid"], unknown["code"]) == (False, "NOT_FOUND")
    assert unknown["key_id"] is None and unknown["scopes"] == []


def test_verify_expired(http: httpx2.Client, tenant: Tenant, verifier_key: str,
                        clock: SettableClock) -> None:
    created = create_key(http, tenant.management_key, expires_in_days=1)
    assert code(http, verifier_key, created["key"]) == "VALID"
    clock.advance(days=1, seconds=-1)
    assert code(http, verifier_key, created["key"]) == "VALID"
    clock.advance(seconds=1)
    answer = verify(http, verifier_key, created["key"])
    assert (answer["valid"], answer["code"]) == (False, "EXPIRED")
    assert answer["scopes"] == []


def test_verify_scopes(http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    secret = create_key(http, tenant.management_key,
                        scopes=["contacts:write", "forms:read"])["key"]
    assert code(http, verifier_key, secret, scopes=["contacts:read", "forms:read"]) == "VALID"
    assert code(http, verifier_key, secret, scopes=["contacts:write"]) == "VALID"
    answer = verify(http, verifier_key, secret, scopes=["forms:read", "forms:write"])
    assert (answer["valid"], answer["code"]) == (False, "INSUFFICIENT_SCOPE")
    assert "forms:write" in answer["message"]
    assert code(http, verifier_key, secret, scopes=["payments:read"]) == "INSUFFICIENT_SCOPE"


def test_verify_ip_allowlist_v4_v6_and_mapped(http: httpx2.Client, tenant: Tenant,
                                              verifier_key: str) -> None:
    secret = create_key(http, tenant.management_key,
                        allowed_ips=["203.0.113.0/24", "2001:db8:1::/48"])["key"]
    cases = {
        "203.0.113.5": "VALID",
        "198.51.100.5": "IP_NOT_ALLOWED",
        "2001:db8:1::42": "VALID",
        "2001:db8:2::42": "IP_NOT_ALLOWED",
        "::ffff:203.0.113.5": "VALID",  # IPv4-mapped IPv6 is the IPv4 address
        "::ffff:198.51.100.5": "IP_NOT_ALLOWED",
    }
    for ip, expected in cases.items():
        assert code(http, verifier_key, secret, ip=ip) == expected, ip
    assert code(http, verifier_key, secret) == "IP_NOT_ALLOWED"  # no address: refused

    # an allowlist written as an IPv4-mapped range matches plain IPv4 clients
    mapped = create_key(http, tenant.management_key, allowed_ips=["::ffff:192.0.2.0/120"])
    assert mapped["allowed_ips"] == ["192.0.2.0/24"]
    assert code(http, verifier_key, mapped["key"], ip="192.0.2.77") == "VALID"
    assert code(http, verifier_key, mapped["key"], ip="::ffff:192.0.2.77") == "VALID"
    assert code(http, verifier_key, mapped["key"], ip="192.0.3.77") == "IP_NOT_ALLOWED"

    r = http.post("/v1/verify", json={"key": secret, "ip": "not-an-ip"},
                  headers=auth(verifier_key))
    assert r.status_code == 422 and r.json()["error"]["field"] == "ip"


def test_verify_tls(http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    secret = create_key(http, tenant.management_key)["key"]  # require_tls by default
    assert code(http, verifier_key, secret, tls=False) == "TLS_REQUIRED"
    r = http.post("/v1/verify", json={"key": secret}, headers=auth(verifier_key))
    assert r.json()["code"] == "TLS_REQUIRED"  # not said: not secure
    assert code(http, verifier_key, secret, tls=True) == "VALID"
    plain = create_key(http, tenant.management_key, require_tls=False)["key"]
    assert code(http, verifier_key, plain, tls=False) == "VALID"


def test_name_colon_key_is_accepted(http: httpx2.Client, tenant: Tenant,
                                    verifier_key: str) -> None:
    created = create_key(http, tenant.management_key, name="zapier")
    assert verify(http, verifier_key, f"zapier:{created['key']}")["code"] == "VALID"
    r = http.get("/v1/keys", headers={"Authorization": f"Bearer ops:{tenant.management_key}"})
    assert r.status_code == 200, r.text
    r = http.post("/v1/verify", json={"key": created["key"], "tls": True},
                  headers={"Authorization": f"Bearer gateway:{verifier_key}"})
    assert r.status_code == 200 and r.json()["code"] == "VALID"


def test_verify_needs_the_verify_scope(http: httpx2.Client, tenant: Tenant) -> None:
    secret = create_key(http, tenant.management_key)["key"]
    r = http.post("/v1/verify", json={"key": secret, "tls": True})
    assert r.status_code == 401
    r = http.post("/v1/verify", json={"key": secret, "tls": True},
                  headers=auth(tenant.management_key))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"


def test_a_tenant_verifier_sees_only_its_own_keys(
    http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, verifier_key: str,
    operator_key: str
) -> None:
    other = make_tenant(keyplane, "Other")
    # a tenant-level verifier: only the operator may grant keys:verify
    r = http.post("/v1/keys", params={"tenant_id": tenant.id},
                  json={"name": "mine", "require_tls": False, "scopes": ["keys:verify"],
                        "owner_id": tenant.admin_id}, headers=auth(operator_key))
    assert r.status_code == 201, r.text
    mine = r.json()
    theirs = create_key(http, other.management_key, name="theirs")["key"]
    assert code(http, mine["key"], theirs) == "NOT_FOUND"
    answer = verify(http, mine["key"], theirs)
    assert answer["key_id"] is None and answer["tenant_id"] is None
    own = create_key(http, tenant.management_key, name="own")["key"]
    assert code(http, mine["key"], own) == "VALID"
    assert code(http, verifier_key, theirs) == "VALID"  # the operator's verifier sees all


# -- operator keys ----------------------------------------------------------------------------


def test_operator_keys(http: httpx2.Client, tenant: Tenant, operator_key: str) -> None:
    r = http.post("/v1/operator/keys",
                  json={"name": "gateway 2", "scopes": ["keys:verify"], "require_tls": False},
                  headers=auth(operator_key))
    assert r.status_code == 201, r.text
    gateway = r.json()
    assert gateway["tenant_id"] is None and gateway["owner_id"] is None
    assert gateway["expires_at"] is None

    listed = all_key_ids(http, operator_key, "/v1/operator/keys")
    assert gateway["id"] in listed
    tenant_keys = all_key_ids(http, tenant.management_key)
    assert not set(listed) & set(tenant_keys)

    # the new operator key works as a verifier
    tenant_key = create_key(http, tenant.management_key)["key"]
    assert code(http, gateway["key"], tenant_key) == "VALID"

    # a TLS-only operator key is refused over plain HTTP
    strict = create_key(http, operator_key, "/v1/operator/keys", name="strict",
                        scopes=["keys:verify"])
    assert strict["require_tls"] is True
    r = http.post("/v1/verify", json={"key": tenant_key, "tls": True},
                  headers=auth(strict["key"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "tls_required"

    # operator keys hold only operator scopes
    r = http.post("/v1/operator/keys", json={"name": "x", "scopes": ["contacts:read"]},
                  headers=auth(operator_key))
    assert r.status_code == 422 and r.json()["error"]["field"] == "scopes"

    # a tenant key cannot reach the operator's keys
    mk = tenant.management_key
    assert http.get("/v1/operator/keys", headers=auth(mk)).status_code == 403
    r = http.post("/v1/operator/keys", json={"name": "x", "scopes": ["keys:verify"]},
                  headers=auth(mk))
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert http.get(f"/v1/operator/keys/{gateway['id']}", headers=auth(mk)).status_code == 403
    assert http.delete(f"/v1/operator/keys/{gateway['id']}", headers=auth(mk)).status_code == 403
    assert gateway["id"] not in tenant_keys
    # nor see one as if it were a tenant key
    assert http.get(f"/v1/keys/{gateway['id']}", headers=auth(mk)).status_code == 404

    # the operator acts on a tenant by naming it
    r = http.get("/v1/keys", headers=auth(operator_key))
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_required"
    r = http.get("/v1/keys", params={"tenant_id": tenant.id}, headers=auth(operator_key))
    assert r.status_code == 200
    assert {k["id"] for k in r.json()["items"]} == set(all_key_ids(http, mk))
    r = http.post("/v1/keys", params={"tenant_id": tenant.id}, json={"name": "by operator"},
                  headers=auth(operator_key))
    assert r.status_code == 422 and r.json()["error"]["field"] == "owner_id"
    r = http.post("/v1/keys", params={"tenant_id": tenant.id},
                  json={"name": "by operator", "owner_id": tenant.admin_id},
                  headers=auth(operator_key))
    assert r.status_code == 201 and r.json()["tenant_id"] == tenant.id

    # revoke an operator key
    r = http.delete(f"/v1/operator/keys/{gateway['id']}", headers=auth(operator_key))
    assert r.status_code == 204
    r = http.post("/v1/verify", json={"key": tenant_key, "tls": True},
                  headers=auth(gateway["key"]))
    assert r.status_code == 401
