"""One-time share links over HTTP (SQLite and PostgreSQL): the creator's API, the page a
link-preview bot may fetch freely, the single hand-out, expiry, withdrawal, and what the database
holds (ciphertext only, then nothing)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core import sealed
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.safety import shares
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.helpers import when
from tests.support import SettableClock

JSON = {"Content-Type": "application/json"}


def share(http: httpx2.Client, key: str, ciphertext: str, **body: Any) -> httpx2.Response:
    return http.post("/v1/shares", json={"ciphertext": ciphertext, **body}, headers=auth(key))


def reveal(http: httpx2.Client, share_id: str) -> httpx2.Response:
    return http.post(f"/s/{share_id}/reveal", content=b"{}", headers=JSON)


def rows(kp: Keyplane) -> list[dict[str, Any]]:
    with kp.engine.connect() as conn:
        return [dict(r) for r in conn.execute(shares.select()).mappings()]


def test_the_creator_sees_and_withdraws_a_link_other_tenants_see_nothing(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant, clock: SettableClock) -> None:
    mk = tenant.management_key
    box = sealed.seal("kp_pretend_secret")
    r = share(http, mk, box.ciphertext, note="for Ana")
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["id"].startswith("shr_") and made["url"].endswith(f"/s/{made['id']}")
    assert when(made["expires_at"]) == clock.now() + timedelta(hours=24)  # the default
    url = f"/v1/shares/{made['id']}"
    shown = http.get(url, headers=auth(mk)).json()
    assert shown["opened_at"] is None and shown["withdrawn"] is False
    assert shown["state"] == "ready" and shown["note"] == "for Ana"
    assert "ciphertext" not in shown

    other = make_tenant(keyplane, "Globex")
    assert http.get(url, headers=auth(other.management_key)).status_code == 404
    assert http.delete(url, headers=auth(other.management_key)).status_code == 404
    assert http.get(url).status_code == 401
    assert http.post("/v1/shares", json={"ciphertext": box.ciphertext}).status_code == 401
    reader = keyplane.keys.create(SYSTEM, tenant.id, {"name": "reader", "require_tls": False,
                                                      "owner_id": tenant.admin_id,
                                                      "scopes": ["keys:read"]}).secret
    refused = share(http, reader, box.ciphertext)
    assert refused.status_code == 403 and "keys:write" in refused.json()["error"]["message"]
    assert http.get(url, headers=auth(reader)).status_code == 200

    assert http.delete(url, headers=auth(mk)).status_code == 204
    shown = http.get(url, headers=auth(mk)).json()
    assert shown["withdrawn"] is True and shown["state"] == "withdrawn"
    page = http.get(f"/s/{made['id']}")
    assert page.status_code == 410 and "withdrawn" in page.text and "Reveal" not in page.text
    gone = reveal(http, made["id"])
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "withdrawn"
    assert [r["ciphertext"] for r in rows(keyplane)] == [None]


def test_bounds(http: httpx2.Client, tenant: Tenant, clock: SettableClock) -> None:
    mk = tenant.management_key
    box = sealed.seal("x")
    cases = [
        ({"expires_in_seconds": 7 * 86400 + 1}, "expires_in_seconds"),
        ({"expires_in_seconds": 59}, "expires_in_seconds"),
        ({"note": "n" * 201}, "note"),
        ({"extra": 1}, "extra"),
    ]
    for body, field in cases:
        r = share(http, mk, box.ciphertext, **body)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)
    for bad in ("not base64!", "c2hvcnQ", "A" * 16385):
        r = share(http, mk, bad)
        assert r.status_code == 422 and r.json()["error"]["field"] == "ciphertext", r.text
    longest = share(http, mk, box.ciphertext, expires_in_seconds=7 * 86400)
    assert longest.status_code == 201
    assert when(longest.json()["expires_at"]) == clock.now() + timedelta(days=7)


def test_the_ciphertext_is_handed_out_once_and_never_by_a_get(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {"name": "zapier",
                                                      "owner_id": tenant.admin_id}).secret
    box = sealed.seal(secret)
    made = share(http, tenant.management_key, box.ciphertext).json()
    [row] = rows(keyplane)
    assert row["ciphertext"] == box.ciphertext
    stored = repr(row)
    assert secret not in stored and secret.partition("_")[2] not in stored
    assert box.key not in stored

    for _ in range(3):  # link previews, crawlers, a person reloading: nothing is consumed
        page = http.get(f"/s/{made['id']}")
        assert page.status_code == 200 and "Reveal" in page.text
        assert box.ciphertext not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    form = http.post(f"/s/{made['id']}/reveal", data={"x": "1"})  # a cross-site form
    assert form.status_code == 415

    with ThreadPoolExecutor(8) as pool:  # eight openings at once: exactly one gets it
        answers = list(pool.map(lambda _: reveal(http, made["id"]), range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [410] * 7
    [first] = [a for a in answers if a.status_code == 200]
    assert first.headers["cache-control"] == "no-store"
    assert sealed.unseal(first.json()["ciphertext"], box.key) == secret
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 410} == {"opened"}

    [row] = rows(keyplane)
    assert row["ciphertext"] is None and row["opened_at"] is not None
    page = http.get(f"/s/{made['id']}")
    assert page.status_code == 410 and "already been opened" in page.text
    shown = http.get(f"/v1/shares/{made['id']}", headers=auth(tenant.management_key)).json()
    assert shown["state"] == "opened" and shown["opened_at"] is not None
    assert http.get("/s/shr_nosuchlink").status_code == 404
    assert reveal(http, "shr_nosuchlink").status_code == 404


def test_an_expired_link_fails_and_its_ciphertext_is_dropped(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant, clock: SettableClock) -> None:
    mk = tenant.management_key
    made = share(http, mk, sealed.seal("s1").ciphertext, expires_in_seconds=3600).json()
    clock.advance(seconds=3599)
    assert http.get(f"/s/{made['id']}").status_code == 200
    clock.advance(seconds=1)
    page = http.get(f"/s/{made['id']}")
    assert page.status_code == 410 and "expired" in page.text and "Reveal" not in page.text
    r = reveal(http, made["id"])
    assert r.status_code == 410 and r.json()["error"]["code"] == "expired"
    assert [row["ciphertext"] for row in rows(keyplane)] == [None]
    shown = http.get(f"/v1/shares/{made['id']}", headers=auth(mk)).json()
    assert shown["state"] == "expired" and shown["opened_at"] is None
