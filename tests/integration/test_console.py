"""The console's API keys pages over plain HTTP (a cookie-keeping client, no browser): where a
signed-out visitor goes, CSRF, field errors in plain words, the one-time secret, rights and
tenant isolation. The browser walk-through is in test_console_browser.py."""

from __future__ import annotations

import re
from html import unescape

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.console_support import (
    MEMBER_PASSWORD,
    add_member,
    form_token,
    secret_in,
    signed_in,
    verify,
)


def key_count(http: httpx2.Client, tenant: Tenant) -> int:
    r = http.get("/v1/keys", headers=auth(tenant.management_key), params={"limit": 100})
    assert r.status_code == 200, r.text
    return len(r.json()["items"])


def field_error(html: str, field: str) -> str:
    found = re.search(rf'<p class="field-error" id="{field}-error"><span class="sr-only">'
                      r'Error: </span>([^<]+)</p>', html)
    assert found, f"no error beside {field}"
    return unescape(found.group(1))


def create(http: httpx2.Client, **fields: str | list[str]) -> httpx2.Response:
    data: dict[str, str | list[str]] = {
        "csrf_token": form_token(http, "/keys/new"), "name": "Zapier", "description": "",
        "expires_in_days": "90", "allowed_ips": "", "require_tls": "on"}
    data.update(fields)
    return http.post("/keys", data=data)


def test_a_signed_out_visitor_is_sent_to_sign_in_and_lands_on_the_console(
        http: httpx2.Client, tenant: Tenant) -> None:
    for path, back in (("/", "%2F"), ("/keys", "%2Fkeys"), ("/keys/new", "%2Fkeys%2Fnew")):
        r = http.get(path)
        assert r.status_code == 303 and r.headers["location"] == f"/signin?next={back}"
    r = http.post("/keys", data={"name": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = http.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/keys"
    page = http.get("/keys")
    assert page.status_code == 200
    assert "<title>API keys · Acme · Keyplane</title>" in page.text
    assert f'<code id="location-id">{tenant.id}</code>' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/static/console.css").status_code == 200


def test_every_form_needs_its_csrf_token(http: httpx2.Client, tenant: Tenant) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    before = key_count(http, tenant)
    for token in (None, "", "forged-token"):
        data = {"name": "Zapier", "expires_in_days": "90"}
        if token is not None:
            data["csrf_token"] = token
        r = http.post("/keys", data=data)
        assert r.status_code == 400 and "This form has expired" in r.text
    key_id = http.get("/v1/keys", headers=auth(tenant.management_key)).json()["items"][0]["id"]
    for action in ("", "/rotate", "/duplicate", "/lock", "/delete"):
        r = http.post(f"/keys/{key_id}{action}", data={"name": "changed"})
        assert r.status_code == 400, action
    assert key_count(http, tenant) == before
    r = http.get("/v1/keys/" + key_id, headers=auth(tenant.management_key))
    assert r.json()["enabled"] is True and r.json()["name"] == "ops"


def test_field_errors_appear_beside_their_field_in_plain_words(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    before = key_count(http, tenant)
    r = create(http, name="  ", description="Nightly export")
    assert r.status_code == 422
    assert field_error(r.text, "name") == "Name must not be empty."
    assert ">Nightly export</textarea>" in r.text  # the form comes back filled in
    assert 'aria-invalid="true"' in r.text

    r = create(http, allowed_ips="10.0.0.0/8\nnot-an-address", scopes=["contacts:read"])
    assert r.status_code == 422
    assert field_error(r.text, "allowed_ips").startswith(
        "Line 2 is not an IPv4 or IPv6 CIDR")
    assert 'value="contacts:read" data-area="contacts"\n                 data-kind="view" checked' \
        in r.text

    r = create(http, expires_in_days="9999")
    assert field_error(r.text, "expires_in_days") == \
        "Validity (days) must be between 1 and 365."
    r = create(http, expires_in_days="soon")
    assert field_error(r.text, "expires_in_days") == "Enter a whole number of days, such as 90."
    r = create(http, expires_in_days="")
    assert field_error(r.text, "expires_in_days") == \
        "This tenant's policy does not allow keys that never expire."

    viewer = add_member(keyplane, tenant.id, "viewer@example.com", role="read_only")
    r = create(http, owner_id=viewer, scopes=["contacts:write"])
    assert r.status_code == 422
    assert field_error(r.text, "scopes") == (
        "The owner does not hold “Contacts Edit”; a key cannot exceed its owner's rights.")
    assert key_count(http, tenant) == before


def test_the_secret_is_shown_once_in_the_answer_to_the_post(
        http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = create(http, scopes=["contacts:read", "payments:read", "payments:write"],
               allowed_ips="", require_tls="on")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert "set-cookie" not in r.headers and "location" not in r.headers
    secret = secret_in(r.text)
    assert "I have stored my key" in r.text and "cannot be shown again" in r.text
    assert verify(http, verifier_key, secret, ["contacts:read", "payments:write"]) == "VALID"
    assert verify(http, verifier_key, secret, ["contacts:write"]) == "INSUFFICIENT_SCOPE"
    key_id = re.search(r'data-url="/keys/([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    listed = http.get(f"/v1/keys/{key_id}", headers=auth(tenant.management_key)).json()
    assert listed["scopes"] == ["contacts:read", "payments:write"]  # Edit stands for View
    assert listed["expires_at"] is not None and listed["require_tls"] is True
    for path in (f"/keys/{key_id}", "/keys", f"/keys?q={listed['start']}",
                 f"/keys?q=kp_{listed['start']}"):
        page = http.get(path)
        assert page.status_code == 200 and secret not in page.text
        assert listed["start"] in page.text


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_a_member_sees_keys_read_only_and_cannot_change_them(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, role: str) -> None:
    add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    listing = http.get("/keys")
    assert listing.status_code == 200 and ">ops</a>" in listing.text
    assert "Create key" not in listing.text
    key_id = re.search(r'href="/keys/(key_[^"]+)"', listing.text).group(1)  # type: ignore[union-attr]
    detail = http.get(f"/keys/{key_id}")
    assert detail.status_code == 200
    for button in (">Rotate<", "Duplicate as new key", ">Lock<", ">Delete<", "Save changes"):
        assert button not in detail.text
    assert "Only an administrator can change it" in detail.text
    assert http.get("/keys/new").status_code == 403
    token = form_token(http)  # a valid token of the member's own session
    before = key_count(http, tenant)
    r = http.post("/keys", data={"csrf_token": token, "name": "sneaky", "expires_in_days": "9"})
    assert r.status_code == 403 and "You cannot do this" in r.text
    assert "Your role does not include “Keys Edit”. Nothing was changed." in r.text
    for action in ("/rotate", "/duplicate", "/lock", "/delete"):
        r = http.post(f"/keys/{key_id}{action}", data={"csrf_token": token})
        assert r.status_code == 403, action
    assert key_count(http, tenant) == before
    assert http.get(f"/v1/keys/{key_id}",
                    headers=auth(tenant.management_key)).json()["enabled"] is True


def test_another_tenants_key_is_not_found(http: httpx2.Client, tenant: Tenant,
                                          keyplane: Keyplane) -> None:
    other = make_tenant(keyplane, "Globex")
    theirs = http.get("/v1/keys", headers=auth(other.management_key)).json()["items"][0]["id"]
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = http.get(f"/keys/{theirs}")
    assert r.status_code == 404 and "Not found" in r.text
    token = form_token(http)
    for action in ("/rotate", "/duplicate", "/lock", "/delete", ""):
        r = http.post(f"/keys/{theirs}{action}", data={"csrf_token": token, "name": "x"})
        assert r.status_code == 404, action
    assert http.get(f"/keys/{theirs}/delete").status_code == 404
    r = http.get(f"/v1/keys/{theirs}", headers=auth(other.management_key))
    assert r.json()["enabled"] is True and r.json()["name"] == "ops"


def detail_form(http: httpx2.Client, key_id: str) -> tuple[str, str]:
    """(CSRF token, version) from a key's page, as the browser would send them."""
    page = http.get(f"/keys/{key_id}")
    assert page.status_code == 200, page.text
    version = re.search(r'name="version" value="([^"]+)"', page.text)
    assert version
    return form_token(http, f"/keys/{key_id}"), version.group(1)


def test_lock_unlock_duplicate_and_rotate_now(http: httpx2.Client, tenant: Tenant,
                                              verifier_key: str) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = create(http, name="Reports", scopes=["forms:read"])
    secret = secret_in(r.text)
    key_id = re.search(r'data-url="/keys/([^"]+)"', r.text).group(1)  # type: ignore[union-attr]

    token, version = detail_form(http, key_id)
    r = http.post(f"/keys/{key_id}/lock", data={"csrf_token": token, "version": version})
    assert r.status_code == 303 and r.headers["location"] == f"/keys/{key_id}?done=locked"
    assert verify(http, verifier_key, secret) == "DISABLED"
    assert "Locked. The key is refused" in http.get(r.headers["location"]).text
    assert ">Reports</a>" in http.get("/keys?state=locked").text
    assert ">Reports</a>" not in http.get("/keys?state=enabled").text
    token, version = detail_form(http, key_id)
    r = http.post(f"/keys/{key_id}/unlock", data={"csrf_token": token, "version": version})
    assert r.status_code == 303 and verify(http, verifier_key, secret) == "VALID"

    r = http.post(f"/keys/{key_id}/duplicate", data={"csrf_token": token})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    copy = secret_in(r.text)
    assert "Reports (copy)" in r.text
    assert verify(http, verifier_key, copy, ["forms:read"]) == "VALID"
    assert verify(http, verifier_key, secret, ["forms:read"]) == "VALID"

    token, version = detail_form(http, key_id)
    r = http.post(f"/keys/{key_id}/rotate",
                  data={"csrf_token": token, "version": version, "expire": "now"})
    assert r.status_code == 200 and "The old secret no longer works." in r.text
    rotated = secret_in(r.text)
    assert verify(http, verifier_key, secret) == "NOT_FOUND"
    assert verify(http, verifier_key, rotated) == "VALID"

    token, version = detail_form(http, key_id)
    r = http.post(f"/keys/{key_id}/rotate", data={
        "csrf_token": token, "version": version, "expire": "later", "grace_days": "91"})
    assert r.status_code == 422
    assert field_error(r.text, "grace_period_seconds") == \
        "The grace period must be between 1 and 90 days."
    assert verify(http, verifier_key, rotated) == "VALID"


def test_a_change_made_elsewhere_since_the_page_was_read_is_not_overwritten(
        http: httpx2.Client, tenant: Tenant) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = create(http, name="Shared", scopes=["contacts:read"])
    key_id = re.search(r'data-url="/keys/([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    token, version = detail_form(http, key_id)
    r = http.patch(f"/v1/keys/{key_id}", headers=auth(tenant.management_key),
                   json={"scopes": ["contacts:write"]})
    assert r.status_code == 200, r.text
    r = http.post(f"/keys/{key_id}", data={"csrf_token": token, "version": version,
                                           "name": "Shared", "scopes": ["contacts:read"]})
    assert r.status_code == 409 and "Someone changed this first" in r.text
    r = http.post(f"/keys/{key_id}/rotate", data={"csrf_token": token, "version": version})
    assert r.status_code == 409
    after = http.get(f"/v1/keys/{key_id}", headers=auth(tenant.management_key)).json()
    assert after["scopes"] == ["contacts:write"]


def test_signing_out_of_the_console_ends_the_session(http: httpx2.Client,
                                                     tenant: Tenant) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = http.post("/signout", data={"csrf_token": form_token(http)})
    assert r.status_code == 303
    r = http.get("/keys")
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fkeys"


def test_the_list_pages_with_the_service_cursor_and_says_when_nothing_matches(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    from keyplane.core.rights import SYSTEM

    for i in range(30):
        keyplane.keys.create(SYSTEM, tenant.id, {"name": f"batch {i:02}",
                                                 "owner_id": tenant.admin_id})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    first = http.get("/keys?q=batch")
    names = re.findall(r">(batch \d\d)</a>", first.text)
    assert len(names) == 25 and names[0] == "batch 29"  # newest first
    assert "First page" not in first.text
    found = re.search(r'href="([^"]+)" rel="next">Next page', first.text)
    assert found
    second = http.get(unescape(found.group(1)))
    rest = re.findall(r">(batch \d\d)</a>", second.text)
    assert rest == [f"batch {i:02}" for i in range(4, -1, -1)]
    assert "Next page" not in second.text and 'href="/keys?q=batch">First page' in second.text
    empty = http.get("/keys?q=no+such+key")
    assert empty.status_code == 200 and "No keys match" in empty.text


def test_an_api_user_can_own_a_key_made_in_the_console(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, verifier_key: str) -> None:
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM

    crm = keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM",
                                                     "scopes": ["contacts:write"]})
    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "Zapier robot", "group_ids": [crm.id]})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    form = http.get("/keys/new").text
    assert f'<option value="{robot.id}">Zapier robot (API user)</option>' in form
    r = create(http, owner_id=robot.id, scopes=["contacts:write"])
    assert r.status_code == 200, r.text
    assert verify(http, verifier_key, secret_in(r.text), ["contacts:write"]) == "VALID"
    assert "<dd>Zapier robot (API user)</dd>" in r.text
    assert "<td class=\"owner\" data-label=\"Owner\">Zapier robot (API user)</td>" in \
        http.get("/keys").text


def test_owners_and_actors_are_named_however_many_principals_the_tenant_has(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM
    from keyplane.web.console import keys as console_keys

    # the owner list offers the newest principals only (2000; 2 here): the rows, the hygiene
    # report and the audit log still name everyone else
    monkeypatch.setattr(console_keys, "MAX_PRINCIPALS", 2)
    forms = keyplane.groups.create(SYSTEM, tenant.id, {"name": "Forms",
                                                       "scopes": ["forms:read"]})
    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "Old robot", "group_ids": [forms.id]})
    for n in range(2):
        keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                   {"name": f"New robot {n}"})
    admin = keyplane.principals.get(SYSTEM, tenant.id, tenant.admin_id)
    r = http.post("/v1/keys", headers=auth(tenant.management_key), json={
        "name": "Nightly export", "owner_id": robot.id, "scopes": ["forms:read"],
        "expires_in_days": 3})
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token, version = detail_form(http, key_id)
    assert http.post(f"/keys/{key_id}/lock", data={"csrf_token": token,
                                                   "version": version}).status_code == 303

    listed = http.get("/keys").text
    assert '<option value="' + robot.id + '"' not in listed  # not offered in the filter
    assert '<td class="owner" data-label="Owner">Old robot (API user)</td>' in listed
    filtered = http.get("/keys", params={"owner": robot.id}).text  # a filter by URL works
    assert ">Nightly export</a>" in filtered
    assert '<td class="owner" data-label="Owner">Old robot (API user)</td>' in \
        http.get("/hygiene", params={"reason": "expiring"}).text
    audit = http.get("/audit").text
    assert f'data-label="Actor">{admin.name}<span class="sub">Session</span>' in audit
    assert "A removed member" not in audit
