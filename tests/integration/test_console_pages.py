"""The console's connected apps and settings pages over plain HTTP (a cookie-keeping client, no
browser): what each role sees and may do, confirmation before revoking, CSRF, another tenant's
ids, and policy errors beside their field. The browser walk-through is in
test_console_browser.py."""

from __future__ import annotations

import re
from dataclasses import asdict
from html import unescape

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.console_support import (
    MEMBER_PASSWORD,
    add_member,
    form_token,
    signed_in,
    verify,
)
from tests.integration.oauth_support import approved_app, exchange, get_code


def field_error(html: str, field: str) -> str:
    found = re.search(rf'<p class="field-error" id="{field}-error"><span class="sr-only">'
                      r'Error: </span>([^<]+)</p>', html)
    assert found, f"no error beside {field}"
    return unescape(found.group(1))


def connect(http: httpx2.Client, tenant: Tenant, operator_key: str,
            name: str = "Zapier", homepage: str = "https://zapier.example") -> tuple[str, str]:
    """An approved app the tenant's admin consented to: (connection id, access token). Leaves
    ``http`` signed in as the admin."""
    partner = approved_app(http, tenant.management_key, operator_key, name=name,
                           homepage=homepage)
    code, verifier = get_code(http, partner, tenant.admin_email, tenant.admin_password,
                              scopes=["contacts:read", "contacts:write"])
    r = exchange(http, partner, code, verifier)
    assert r.status_code == 200, r.text
    listed = http.get("/v1/connections", headers=auth(tenant.management_key)).json()["items"]
    found = [c["id"] for c in listed if c["app"]["name"] == name]
    assert len(found) == 1
    return found[0], r.json()["access_token"]


def active(http: httpx2.Client, tenant: Tenant, connection_id: str) -> bool:
    r = http.get(f"/v1/connections/{connection_id}", headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    return r.json()["revoked_at"] is None


# -- connected apps -----------------------------------------------------------------------------

def test_an_admin_sees_every_connection_and_revokes_one_after_confirming(
        http: httpx2.Client, tenant: Tenant, operator_key: str, verifier_key: str) -> None:
    connection_id, token = connect(http, tenant, operator_key)
    assert verify(http, verifier_key, token, ["contacts:write"]) == "VALID"
    page = http.get("/connections")
    assert page.status_code == 200
    assert "<title>Connected apps · Acme · Keyplane</title>" in page.text
    row = page.text[page.text.index('<th scope="row" class="name">Zapier'):]
    row = row[:row.index("</tr>")]
    assert "https://zapier.example" in row and f">{tenant.admin_email}</td>" in row
    assert '<span class="chip">Contacts Edit</span>' in row  # Edit stands for View
    assert "Contacts View" not in row
    assert f'href="/connections/{connection_id}/revoke"' in row
    assert 'aria-current="page">Connected apps' in page.text

    confirm = http.get(f"/connections/{connection_id}/revoke")
    assert confirm.status_code == 200
    assert "Revoke “Zapier”?" in confirm.text
    assert "Automations" in confirm.text and "stop working" in confirm.text
    assert '<span class="chip">Contacts Edit</span>' in confirm.text
    assert active(http, tenant, connection_id)  # asking changes nothing

    r = http.post(f"/connections/{connection_id}/revoke",
                  data={"csrf_token": form_token(http, "/connections")})
    assert r.status_code == 303 and r.headers["location"] == "/connections?done=revoked"
    assert not active(http, tenant, connection_id)
    assert verify(http, verifier_key, token, ["contacts:read"]) != "VALID"
    after = http.get(r.headers["location"])
    assert "Revoked. Its tokens are refused from now on." in after.text
    assert "revoke\">Revoke" not in after.text and "Zapier" not in after.text
    assert "No apps are connected" in after.text
    # revoking again: there is nothing left to revoke
    r = http.post(f"/connections/{connection_id}/revoke",
                  data={"csrf_token": form_token(http, "/connections")})
    assert r.status_code == 404


def test_revoking_needs_the_forms_csrf_token(http: httpx2.Client, tenant: Tenant,
                                             operator_key: str) -> None:
    connection_id, _ = connect(http, tenant, operator_key)
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "forged-token"}):
        r = http.post(f"/connections/{connection_id}/revoke", data=data)
        assert r.status_code == 400 and "This form has expired" in r.text
    assert active(http, tenant, connection_id)


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_a_member_sees_connected_apps_read_only(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, operator_key: str,
        role: str) -> None:
    connection_id, _ = connect(http, tenant, operator_key)
    http.cookies.clear()
    add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    page = http.get("/connections")
    assert page.status_code == 200 and "Zapier" in page.text
    assert "/revoke" not in page.text and ">Revoke" not in page.text
    assert "Only an administrator can revoke them" in page.text
    assert http.get(f"/connections/{connection_id}/revoke").status_code == 403
    r = http.post(f"/connections/{connection_id}/revoke",
                  data={"csrf_token": form_token(http, "/connections")})
    assert r.status_code == 403 and "You cannot do this" in r.text
    assert active(http, tenant, connection_id)


def test_another_tenants_connection_is_not_found(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, operator_key: str) -> None:
    other = make_tenant(keyplane, "Globex")
    theirs, _ = connect(http, other, operator_key)
    http.cookies.clear()
    signed_in(http, tenant.admin_email, tenant.admin_password)
    assert "Zapier" not in http.get("/connections").text
    assert http.get(f"/connections/{theirs}/revoke").status_code == 404
    r = http.post(f"/connections/{theirs}/revoke",
                  data={"csrf_token": form_token(http, "/connections")})
    assert r.status_code == 404 and "Not found" in r.text
    assert active(http, other, theirs)


# -- settings -----------------------------------------------------------------------------------

def policy_form(http: httpx2.Client, **changes: str) -> dict[str, str]:
    data = {"csrf_token": form_token(http, "/settings"), "default_expiry_days": "90",
            "max_expiry_days": "365", "allowed_ips": "", "require_tls_default": "on",
            "leaked_key_action": "revoke", "api_users_need_group": "on"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def policy(keyplane: Keyplane, tenant: Tenant) -> dict[str, object]:
    from keyplane.core.rights import SYSTEM

    found = keyplane.tenants.get(SYSTEM, tenant.id).policy
    return {**asdict(found), "leaked_key_action": found.leaked_key_action.value}


def test_an_admin_changes_the_key_policy_and_new_keys_follow_it(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get("/settings")
    assert page.status_code == 200
    assert f'<code id="settings-location-id">{tenant.id}</code>' in page.text
    assert 'data-copy="settings-location-id"' in page.text
    assert "You are connecting from <code>127.0.0.1</code>." in page.text
    r = http.post("/settings", data=policy_form(
        http, default_expiry_days="30", max_expiry_days="", allow_non_expiring="on",
        allowed_ips="10.0.0.0/8\n 2001:db8::/32 ", require_tls_default="",
        leaked_key_action="lock", revoke_unused_after_days="120"))
    assert r.status_code == 303 and r.headers["location"] == "/settings?done=saved"
    assert policy(keyplane, tenant) == {
        "default_expiry_days": 30, "max_expiry_days": None, "allow_non_expiring": True,
        "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"], "require_tls_default": False,
        "leaked_key_action": "lock", "revoke_unused_after_days": 120,
        "require_admin_two_factor": False, "api_users_need_group": True,
        "audit_retention_days": None}  # set through the API only; the form leaves it
    saved = http.get("/settings?done=saved").text
    assert "Saved. New keys follow the new policy" in saved
    assert 'id="api_users_need_group" name="api_users_need_group"' in saved
    assert 'id="leak-lock" name="leaked_key_action" value="lock" checked' in saved
    assert ">10.0.0.0/8\n2001:db8::/32</textarea>" in saved
    new_key = http.get("/keys/new").text
    assert 'value="30"' in new_key and "Leave it empty for a key that never expires" in new_key


def test_policy_errors_appear_beside_their_field_and_nothing_is_saved(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    before = policy(keyplane, tenant)
    cases = [
        ({"default_expiry_days": "soon"}, "default_expiry_days",
         "Enter a whole number of days, such as 90."),
        ({"default_expiry_days": "0"}, "default_expiry_days",
         "Default lifetime (days) must be between 1 and 3650."),
        ({"default_expiry_days": "400", "max_expiry_days": "365"}, "default_expiry_days",
         "The default lifetime must not be longer than the maximum lifetime."),
        ({"max_expiry_days": "99999"}, "max_expiry_days",
         "Maximum lifetime (days) must be between 1 and 3650."),
        ({"max_expiry_days": "-5"}, "max_expiry_days",
         "Enter a whole number of days, such as 90."),
        ({"allowed_ips": "10.0.0.0/8\nnot-an-address"}, "allowed_ips",
         "Line 2 "),
        ({"leaked_key_action": "shrug"}, "leaked_key_action",
         "Choose whether a leaked key is revoked or locked."),
    ]
    for changes, field, words in cases:
        r = http.post("/settings", data=policy_form(http, **changes))
        assert r.status_code == 422, (changes, r.text)
        assert field_error(r.text, field).startswith(words), (changes, field_error(r.text, field))
        assert f'id="{field}-error"' in r.text and 'role="alert"' in r.text
    r = http.post("/settings", data=policy_form(http, allowed_ips="10.0.0.0/8\nbad",
                                                default_expiry_days="45"))
    assert ">10.0.0.0/8\nbad</textarea>" in r.text and 'value="45"' in r.text  # kept
    assert policy(keyplane, tenant) == before


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_a_member_sees_the_policy_but_cannot_change_it(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, role: str) -> None:
    add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    before = policy(keyplane, tenant)
    page = http.get("/settings")
    assert page.status_code == 200 and tenant.id in page.text
    assert "Save policy" not in page.text and "Only an administrator can change it" in page.text
    r = http.post("/settings", data=policy_form(http, default_expiry_days="7"))
    assert r.status_code == 403 and "You cannot do this" in r.text
    assert policy(keyplane, tenant) == before


def test_saving_the_policy_needs_the_forms_csrf_token(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    before = policy(keyplane, tenant)
    for token in ("", "forged-token"):
        r = http.post("/settings", data=policy_form(http, csrf_token=token,
                                                    default_expiry_days="7"))
        assert r.status_code == 400 and "This form has expired" in r.text
    assert policy(keyplane, tenant) == before


def test_signed_out_visitors_are_sent_to_sign_in(http: httpx2.Client) -> None:
    for path in ("/connections", "/settings", "/connections/con_x/revoke"):
        r = http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=")
    r = http.post("/settings", data={"default_expiry_days": "1"})
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")


# -- audit log ----------------------------------------------------------------------------------

def audit_rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in html else ""
    return [row for row in body.split("<tr>")[1:]]


def test_the_audit_log_shows_who_did_what_from_where_and_filters_by_action(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, "/keys/new")
    r = http.post("/keys", data={"csrf_token": token, "name": "Audited", "expires_in_days": "9",
                                 "require_tls": "on"})
    assert r.status_code == 200, r.text
    key_id = re.search(r'data-url="/keys/([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    r = http.post(f"/keys/{key_id}/delete", data={"csrf_token": token})
    assert r.status_code == 303
    page = http.get("/audit")
    assert page.status_code == 200 and "<title>Audit log · Acme · Keyplane</title>" in page.text
    rows = audit_rows(page.text)
    revoked = next(row for row in rows if "<code>key.revoked</code>" in row)
    assert "Key revoked" in revoked and f"{tenant.admin_email}" in revoked
    assert '<span class="sub">Session</span>' in revoked
    assert f'<a href="/keys/{key_id}"><code>{key_id}</code></a>' in revoked
    assert "<code>127.0.0.1</code>" in revoked
    assert any("<code>key.created</code>" in row for row in rows)
    assert any("<code>session.signed_in</code>" in row for row in rows)

    only = http.get("/audit?action=key.revoked")
    assert all("<code>key.revoked</code>" in row for row in audit_rows(only.text))
    assert len(audit_rows(only.text)) == 1
    assert '<option value="key.revoked" selected>' in only.text
    assert "No events match" in http.get("/audit?action=webhook.deleted").text
    ignored = http.get("/audit?action=%3Cscript%3E")  # not an action: the filter is ignored
    assert ignored.status_code == 200 and "<script>" not in ignored.text
    assert len(audit_rows(ignored.text)) == len(rows)


def test_the_audit_log_pages_with_the_service_cursor(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    from keyplane.core.rights import SYSTEM

    for i in range(55):
        keyplane.keys.create(SYSTEM, tenant.id, {"name": f"batch {i:02}",
                                                 "owner_id": tenant.admin_id})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    first = http.get("/audit?action=key.created")
    assert len(audit_rows(first.text)) == 50 and "Newest events" not in first.text
    assert '<span class="sub">Keyplane</span>' in audit_rows(first.text)[0]
    found = re.search(r'href="([^"]+)" rel="next">Older events', first.text)
    assert found and "action=key.created" in found.group(1)
    second = http.get(unescape(found.group(1)))
    assert len(audit_rows(second.text)) == 6  # 55 here and the tenant's first key
    assert "Older events" not in second.text
    assert 'href="/audit?action=key.created">Newest events' in second.text


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_members_read_the_audit_log_of_their_own_tenant_only(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, role: str) -> None:
    other = make_tenant(keyplane, "Globex")
    r = http.post("/v1/keys", headers=auth(other.management_key),
                  json={"name": "Globex secret project"})
    assert r.status_code == 201, r.text
    add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    page = http.get("/audit")
    assert page.status_code == 200
    assert "Globex" not in page.text and other.id not in page.text
    assert r.json()["id"] not in page.text
    assert any("<code>session.signed_in</code>" in row for row in audit_rows(page.text))


# -- members ------------------------------------------------------------------------------------

def member_state(keyplane: Keyplane, tenant: Tenant, member_id: str) -> tuple[str, bool] | None:
    from keyplane.core.errors import NotFound
    from keyplane.core.rights import SYSTEM

    try:
        found = keyplane.principals.get(SYSTEM, tenant.id, member_id)
    except NotFound:
        return None
    return found.role.value, found.enabled


def test_an_admin_changes_a_role_disables_enables_and_removes_a_member(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, operator_key: str,
        verifier_key: str) -> None:
    from keyplane.core.rights import SYSTEM

    mia = add_member(keyplane, tenant.id, "mia@example.com", role="admin")
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "Mia's export", "owner_id": mia,
                                                      "scopes": ["contacts:read"]})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    listing = http.get("/members")
    assert listing.status_code == 200 and "<title>Members · Acme · Keyplane</title>" in listing.text
    assert f'<a href="/members/{mia}">Mia</a>' in listing.text and "mia@example.com" in listing.text
    token = form_token(http, f"/members/{mia}")

    r = http.post(f"/members/{mia}/role", data={"csrf_token": token, "role": "read_only"})
    assert r.status_code == 303 and r.headers["location"] == f"/members/{mia}?done=role"
    assert member_state(keyplane, tenant, mia) == ("read_only", True)
    assert "Saved. The new role applies at once" in http.get(r.headers["location"]).text
    r = http.post(f"/members/{mia}/role", data={"csrf_token": token, "role": "owner"})
    assert r.status_code == 422 and "Choose one of the roles listed." in r.text

    r = http.post(f"/members/{mia}/disable", data={"csrf_token": token})
    assert r.status_code == 303 and member_state(keyplane, tenant, mia) == ("read_only", False)
    assert verify(http, verifier_key, issued.secret) != "VALID"
    r = http.post(f"/members/{mia}/enable", data={"csrf_token": token})
    assert r.status_code == 303 and member_state(keyplane, tenant, mia) == ("read_only", True)
    assert verify(http, verifier_key, issued.secret) == "VALID"

    confirm = http.get(f"/members/{mia}/remove")
    assert confirm.status_code == 200 and "Remove Mia?" in confirm.text
    assert "Mia&#39;s export</a>" in confirm.text and "Keys revoked" in confirm.text
    assert member_state(keyplane, tenant, mia) is not None  # asking changes nothing
    r = http.post(f"/members/{mia}/remove", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/members?done=removed"
    assert member_state(keyplane, tenant, mia) is None
    assert verify(http, verifier_key, issued.secret) == "REVOKED"
    assert "mia@example.com" not in http.get("/members").text


def test_removing_lists_the_connected_apps_it_stops(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, operator_key: str) -> None:
    connect(http, tenant, operator_key)
    http.cookies.clear()
    add_member(keyplane, tenant.id, "ops@example.com", role="admin")
    signed_in(http, "ops@example.com", MEMBER_PASSWORD)
    confirm = http.get(f"/members/{tenant.admin_id}/remove")
    assert confirm.status_code == 200
    apps = confirm.text.split("Connected apps refused", 1)[1]
    assert "<li>Zapier</li>" in apps
    assert "<li><a href=\"/keys/" in confirm.text  # the admin's own key, ops


def test_the_last_admin_stays_and_the_page_says_why(http: httpx2.Client, tenant: Tenant,
                                                     keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    me = tenant.admin_id
    token = form_token(http, f"/members/{me}")
    for path, data in ((f"/members/{me}/role", {"role": "member"}),
                       (f"/members/{me}/disable", {}), (f"/members/{me}/remove", {})):
        r = http.post(path, data={"csrf_token": token, **data})
        assert r.status_code == 409, path
        assert "they are the only admin of Acme, and nobody could manage it any more. " \
               "Make another member an admin first." in r.text
        assert 'class="field-error"' in r.text
    assert member_state(keyplane, tenant, me) == ("admin", True)


def test_an_admin_adds_a_member_with_a_password(http: httpx2.Client, tenant: Tenant,
                                                 keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)

    def add(**fields: str) -> httpx2.Response:
        data = {"csrf_token": form_token(http, "/members/new"), "name": "Noor",
                "email": "noor@example.com", "role": "member", "password": "a long password 1"}
        data.update(fields)
        return http.post("/members", data=data)

    r = add(email="not an address")
    assert r.status_code == 422 and field_error(r.text, "email") == \
        "Email is not an email address."
    assert 'value="Noor"' in r.text and "a long password 1" not in r.text
    r = add(password="short")
    assert r.status_code == 422 and field_error(r.text, "password").startswith("Password must")
    r = add()
    assert r.status_code == 303 and r.headers["location"] == "/members?done=added"
    r = add()
    assert r.status_code == 409 and field_error(r.text, "email") == \
        "A member with this email already exists."
    http.cookies.clear()
    signed_in(http, "noor@example.com", "a long password 1")
    assert http.get("/members").status_code == 200


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_a_member_sees_members_read_only(http: httpx2.Client, tenant: Tenant,
                                         keyplane: Keyplane, role: str) -> None:
    mia = add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    listing = http.get("/members")
    assert listing.status_code == 200 and tenant.admin_email in listing.text
    assert "Add member" not in listing.text and f'href="/members/{tenant.admin_id}"' not in \
        listing.text
    token = form_token(http, "/members")
    for path, data in ((f"/members/{tenant.admin_id}/role", {"role": "read_only"}),
                       (f"/members/{tenant.admin_id}/disable", {}),
                       (f"/members/{tenant.admin_id}/remove", {}),
                       (f"/members/{mia}/role", {"role": "admin"}),
                       ("/members", {"email": "x@example.com", "password": "a long password 1",
                                     "role": "admin"})):
        r = http.post(path, data={"csrf_token": token, **data})
        assert r.status_code == 403 and "You cannot do this" in r.text, path
    assert http.get(f"/members/{tenant.admin_id}/remove").status_code == 403
    assert http.get("/members/new").status_code == 403
    assert member_state(keyplane, tenant, tenant.admin_id) == ("admin", True)
    assert member_state(keyplane, tenant, mia) == (role, True)


def test_another_tenants_member_is_not_found_and_forms_need_csrf(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    other = make_tenant(keyplane, "Globex")
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, "/members")
    assert http.get(f"/members/{other.admin_id}").status_code == 404
    assert http.get(f"/members/{other.admin_id}/remove").status_code == 404
    for action in ("role", "disable", "remove"):
        r = http.post(f"/members/{other.admin_id}/{action}",
                      data={"csrf_token": token, "role": "read_only"})
        assert r.status_code == 404, action
    assert member_state(keyplane, other, other.admin_id) == ("admin", True)
    mia = add_member(keyplane, tenant.id, "mia@example.com")
    for action in ("role", "disable", "remove"):
        r = http.post(f"/members/{mia}/{action}", data={"csrf_token": "forged",
                                                        "role": "admin"})
        assert r.status_code == 400 and "This form has expired" in r.text
    r = http.post("/members", data={"email": "x@example.com", "password": "a long password 1"})
    assert r.status_code == 400
    assert member_state(keyplane, tenant, mia) == ("member", True)


def test_the_key_list_filters_by_owner(http: httpx2.Client, tenant: Tenant,
                                       keyplane: Keyplane) -> None:
    from keyplane.core.rights import SYSTEM

    mia = add_member(keyplane, tenant.id, "mia@example.com")
    keyplane.keys.create(SYSTEM, tenant.id, {"name": "Mias key", "owner_id": mia})
    other = make_tenant(keyplane, "Globex")
    signed_in(http, tenant.admin_email, tenant.admin_password)
    mine = http.get(f"/keys?owner={mia}")
    assert ">Mias key</a>" in mine.text and ">ops</a>" not in mine.text
    assert f'<option value="{mia}" selected>' in mine.text
    theirs = http.get(f"/keys?owner={other.admin_id}")  # not ours: no filter
    assert ">Mias key</a>" in theirs.text and ">ops</a>" in theirs.text


# -- API users ----------------------------------------------------------------------------------

def make_group(keyplane: Keyplane, tenant: Tenant, name: str, scopes: list[str]) -> str:
    from keyplane.core.rights import SYSTEM

    return keyplane.groups.create(SYSTEM, tenant.id, {"name": name, "scopes": scopes}).id


def test_creating_an_api_user_leads_on_to_its_first_key(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, verifier_key: str) -> None:
    from keyplane.core.rights import SYSTEM

    crm = make_group(keyplane, tenant, "CRM", ["contacts:write"])
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, "/api-users/new")
    r = http.post("/api-users", data={"csrf_token": token, "name": " ", "role": "member",
                                      "group_ids": crm})
    assert r.status_code == 422 and field_error(r.text, "name") == "Name must not be empty."
    assert f'value="{crm}" checked' in r.text
    r = http.post("/api-users", data={"csrf_token": token, "name": "Zapier robot",
                                      "role": "member", "group_ids": crm})
    assert r.status_code == 303 and r.headers["location"].startswith("/keys/new?owner=svc_")
    robot = r.headers["location"].split("owner=")[1].split("&")[0]
    made = keyplane.principals.get(SYSTEM, tenant.id, robot)
    assert made.name == "Zapier robot" and made.group_ids == [crm]
    form = http.get(r.headers["location"])
    assert "API user “Zapier robot” created. Now create its first key" in form.text
    assert f'<option value="{robot}" selected>Zapier robot (API user)</option>' in form.text
    r = http.post("/keys", data={"csrf_token": token, "name": "Zap", "owner_id": robot,
                                 "scopes": ["contacts:write"], "expires_in_days": "30"})
    assert r.status_code == 200, r.text
    secret = re.search(r'<code id="new-secret">([^<]+)</code>', r.text).group(1)  # type: ignore[union-attr]
    assert verify(http, verifier_key, secret, ["contacts:write"]) == "VALID"
    listing = http.get("/api-users")
    assert f'<a href="/api-users/{robot}">Zapier robot</a>' in listing.text
    assert '<span class="chip">CRM</span>' in listing.text
    assert f'href="/keys?owner={robot}"' in listing.text
    assert ">Zap</a>" in http.get(f"/api-users/{robot}").text


def test_an_admin_changes_groups_and_disables_an_api_user(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, verifier_key: str) -> None:
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM

    crm = make_group(keyplane, tenant, "CRM", ["contacts:write"])
    billing = make_group(keyplane, tenant, "Billing", ["payments:read"])
    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "Robot", "group_ids": [crm]}).id
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "Robot key", "owner_id": robot,
                                                      "scopes": ["contacts:read"]})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, f"/api-users/{robot}")
    r = http.post(f"/api-users/{robot}/groups", data={"csrf_token": token,
                                                      "group_ids": billing})
    assert r.status_code == 303 and r.headers["location"] == f"/api-users/{robot}?done=groups"
    assert keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids == [billing]
    assert verify(http, verifier_key, issued.secret, ["contacts:read"]) != "VALID"
    r = http.post(f"/api-users/{robot}/groups", data={"csrf_token": token,
                                                      "group_ids": "grp_nope"})
    assert r.status_code == 422 and "one of them no longer exists" in r.text
    r = http.post(f"/api-users/{robot}/groups", data={"csrf_token": token, "group_ids": crm})
    assert verify(http, verifier_key, issued.secret, ["contacts:read"]) == "VALID"
    r = http.post(f"/api-users/{robot}/disable", data={"csrf_token": token})
    assert r.status_code == 303 and verify(http, verifier_key, issued.secret) != "VALID"
    assert "Disabled. Its keys are refused" in http.get(r.headers["location"]).text
    r = http.post(f"/api-users/{robot}/enable", data={"csrf_token": token})
    assert r.status_code == 303 and verify(http, verifier_key, issued.secret) == "VALID"


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_a_member_sees_api_users_read_only(http: httpx2.Client, tenant: Tenant,
                                           keyplane: Keyplane, role: str) -> None:
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM

    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "Robot"}).id
    add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    listing = http.get("/api-users")
    assert listing.status_code == 200 and ">Robot</a>" in listing.text
    assert "Create API user" not in listing.text
    detail = http.get(f"/api-users/{robot}")
    assert detail.status_code == 200
    for button in ("Save role", "Save groups", ">Disable<", ">Create key<"):
        assert button not in detail.text
    assert http.get("/api-users/new").status_code == 403
    token = form_token(http, "/api-users")
    for path, data in (("/api-users", {"name": "Sneaky", "role": "admin"}),
                       (f"/api-users/{robot}/role", {"role": "admin"}),
                       (f"/api-users/{robot}/groups", {}),
                       (f"/api-users/{robot}/disable", {})):
        r = http.post(path, data={"csrf_token": token, **data})
        assert r.status_code == 403 and "You cannot do this" in r.text, path
    found = keyplane.principals.get(SYSTEM, tenant.id, robot)
    assert found.enabled and found.role.value == "member"
    names = [p.name for p in keyplane.principals.list(
        SYSTEM, tenant.id, kind=PrincipalKind.SERVICE_ACCOUNT, limit=10, cursor=None).items]
    assert names == ["Robot"]


def test_another_tenants_api_user_is_not_found_and_forms_need_csrf(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM

    other = make_tenant(keyplane, "Globex")
    theirs = keyplane.principals.create(SYSTEM, other.id, PrincipalKind.SERVICE_ACCOUNT,
                                        {"name": "Their robot"}).id
    ours = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                      {"name": "Our robot"}).id
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, "/api-users")
    assert http.get(f"/api-users/{theirs}").status_code == 404
    assert http.get(f"/api-users/{tenant.admin_id}").status_code == 404  # a member, not one
    for action in ("role", "groups", "disable", "enable"):
        r = http.post(f"/api-users/{theirs}/{action}", data={"csrf_token": token,
                                                             "role": "admin"})
        assert r.status_code == 404, action
        r = http.post(f"/api-users/{ours}/{action}", data={"csrf_token": "forged",
                                                           "role": "admin"})
        assert r.status_code == 400, action
    assert keyplane.principals.get(SYSTEM, other.id, theirs).enabled
    found = keyplane.principals.get(SYSTEM, tenant.id, ours)
    assert found.enabled and found.role.value == "member"


def test_an_admin_turns_api_users_need_group_off_and_on(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    r = http.post("/settings", data=policy_form(http, api_users_need_group=""))
    assert r.status_code == 303
    assert policy(keyplane, tenant)["api_users_need_group"] is False
    assert "API users need a data access group" in http.get("/settings").text
    r = http.post("/settings", data=policy_form(http))
    assert policy(keyplane, tenant)["api_users_need_group"] is True
