"""The console in a real browser (Playwright driving Debian's Chromium), as a tenant admin and a
member use it: sign in → create a key with Contacts View and Payments Edit → take the secret from
the one-time dialog → it verifies → change its scopes → the change holds at once → rotate with a
grace period → both secrets verify → delete → refused. axe-core (vendored, tests only) checks
every page; the tests save the screenshots under docs/screenshots/.

Skipped when /usr/bin/chromium or Playwright is missing, except in CI
(``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where that is a failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, auth, make_tenant
from tests.integration import test_oauth_browser as oauth_browser
from tests.integration.console_support import MEMBER_PASSWORD, add_member, verify
from tests.integration.test_oauth_browser import BOUND, bearer
from tests.support import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
AXE = (ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js").read_text()
PHONE = {"width": 390, "height": 844}
crm = oauth_browser.crm  # the example CRM behind the SDK middleware (a fixture)


def accessible(page: Any) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE)
    found = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ': ' + v.help + ' @ ' + v.nodes.map(n => n.target).join(' | '));
    }""")
    assert found == [], f"{page.url}: {found}"


@pytest.fixture
def shot(database: tuple[str, str | None], tmp_path: Path) -> Callable[..., None]:
    """Saves a screenshot of each main page: the README's, under docs/screenshots/, from the
    SQLite run when ``KEYPLANE_UPDATE_SCREENSHOTS=1`` (so a plain test run leaves the work tree
    as it was); otherwise in the test's temporary folder."""
    refresh = os.environ.get("KEYPLANE_UPDATE_SCREENSHOTS") == "1" and database[1] is None
    folder = SCREENSHOTS if refresh else tmp_path

    def save(page: Any, name: str, full_page: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)

    return save


def no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert width <= 0, f"{page.url} scrolls sideways by {width}px at phone width"


def sign_in(page: Any, base: str, email: str, password: str) -> None:
    page.goto(base + "/")
    page.wait_for_url("**/signin?next=%2F")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/keys")


def seed_keys(http: httpx2.Client, tenant: Tenant, verifier_key: str) -> None:
    """A few keys in different states, so the list shows its badges."""
    def create(**body: Any) -> dict[str, Any]:
        r = http.post("/v1/keys", headers=auth(tenant.management_key), json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    create(name="Billing sync", description="Pushes invoices to the ledger",
           scopes=["payments:write"], expires_in_days=10)
    used = create(name="Nightly export", description="Contacts to the data warehouse",
                  scopes=["contacts:read", "opportunities:read"], require_tls=False)
    assert verify(http, verifier_key, used["key"], ["contacts:read"]) == "VALID"
    locked = create(name="Legacy import", scopes=["contacts:write"])
    r = http.patch(f"/v1/keys/{locked['id']}", headers=auth(tenant.management_key),
                   json={"enabled": False})
    assert r.status_code == 200, r.text


def test_an_admin_creates_changes_rotates_and_deletes_a_key(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,
        verifier_key: str, shot: Callable[..., None], crm: httpx2.Client) -> None:
    from playwright.sync_api import expect

    seed_keys(http, tenant, verifier_key)
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    try:
        # signed out, / sends the browser to sign in, which comes back to the console
        sign_in(page, server.url, tenant.admin_email, tenant.admin_password)
        expect(page).to_have_title("API keys · Acme · Keyplane")
        expect(page.get_by_role("row", name="Billing sync")).to_contain_text("Expires soon")
        expect(page.get_by_role("row", name="Billing sync")).to_contain_text("Never used")
        expect(page.get_by_role("row", name="Legacy import")).to_contain_text("Locked")
        accessible(page)
        shot(page, "keys-list")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        shot(page, "keys-list-phone")
        page.set_viewport_size({"width": 1280, "height": 860})

        # the key hygiene page, from the sections menu
        page.get_by_role("link", name="Key hygiene").click()
        page.wait_for_url("**/hygiene")
        expect(page.get_by_role("row", name="Billing sync")).to_contain_text("Expiring soon")
        accessible(page)
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.get_by_role("link", name="API keys").click()
        page.wait_for_url("**/keys")

        # search and the locked filter
        page.get_by_label("Search").fill("nightly")
        page.get_by_role("button", name="Search").click()
        expect(page.get_by_role("row")).to_have_count(2)  # the header and Nightly export
        page.get_by_label("Search").fill("")
        page.get_by_label("State").select_option("locked")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator("tbody")).to_contain_text("Legacy import")

        # create: a field error first, shown beside its field, the form filled in again
        page.get_by_role("link", name="Create key").click()
        expect(page).to_have_title("Create key · Acme · Keyplane")
        expect(page.get_by_label("Validity (days)")).to_have_value("90")
        expect(page.get_by_label("Require secure connections")).to_be_checked()
        page.get_by_label("Name", exact=True).fill("Zapier")
        page.get_by_label("Description").fill("Contacts and payments for our automations")
        page.get_by_label("Contacts View", exact=True).check()
        page.get_by_label("Payments Edit", exact=True).check()
        expect(page.get_by_label("Payments View", exact=True)).to_be_checked()  # Edit ticks View
        page.get_by_label("Allowed IPs").fill("10.0.0.0/8\n203.0.113.999")
        page.get_by_role("button", name="Create key").click()
        error = page.locator("#allowed_ips-error")
        expect(error).to_contain_text("Line 2 is not an IPv4 or IPv6 CIDR")
        expect(page.get_by_label("Allowed IPs")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_label("Contacts View", exact=True)).to_be_checked()
        expect(page.get_by_label("Payments Edit", exact=True)).to_be_checked()
        expect(page.get_by_label("Name", exact=True)).to_have_value("Zapier")
        accessible(page)
        shot(page, "key-create-error")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.get_by_label("Allowed IPs").fill("")
        page.get_by_label("Require secure connections").uncheck()  # the CRM runs on plain HTTP
        page.get_by_role("button", name="Create key").click()

        # the one-time dialog: modal, focus inside, Continue only once the key is stored
        dialog = page.get_by_role("dialog", name="Your new API key")
        expect(dialog).to_be_visible()
        # focus moves in when the dialog opens: wait for it (up to 5 s), as expect() would
        page.wait_for_function("document.activeElement?.closest('dialog') != null",
                               timeout=5000)
        secret = page.locator("#new-secret").inner_text().strip()
        assert secret.startswith("kp_")
        assert secret not in page.url
        expect(dialog).to_contain_text("cannot be shown again")
        next_button = dialog.get_by_role("button", name="Continue")
        expect(next_button).to_be_disabled()
        page.keyboard.press("Escape")
        expect(dialog).to_be_visible()  # Escape does not close it before the box is ticked
        dialog.get_by_role("button", name="Copy the key").click()
        assert page.evaluate("navigator.clipboard.readText()") == secret
        accessible(page)
        shot(page, "key-secret-dialog", full_page=False)
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        assert verify(http, verifier_key, secret, ["contacts:read", "payments:write"]) == "VALID"
        assert verify(http, verifier_key, secret, ["contacts:write"]) == "INSUFFICIENT_SCOPE"
        # and the example CRM, behind the SDK middleware, lets it in within its scopes
        assert crm.get("/contacts", headers=bearer(secret)).status_code == 200
        assert crm.get("/payments", headers=bearer(secret)).status_code == 200
        assert crm.post("/contacts", json={"name": "Ada"},
                        headers=bearer(secret)).status_code == 403
        dialog.get_by_label("I have stored my key").check()
        expect(next_button).to_be_enabled()
        next_button.click()
        page.wait_for_url("**/keys/key_*")
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page).to_have_title("Zapier · Acme · Keyplane")
        assert secret not in page.content()

        # the detail page: scope changes take effect at once
        expect(page.get_by_text("Changes take effect at once")).to_be_visible()
        accessible(page)
        shot(page, "key-detail")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.get_by_label("Payments Edit", exact=True).uncheck()
        page.get_by_label("Contacts Edit", exact=True).check()
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
        assert verify(http, verifier_key, secret, ["payments:write"]) == "INSUFFICIENT_SCOPE"
        assert verify(http, verifier_key, secret, ["payments:read", "contacts:write"]) == "VALID"

        # rotate with a grace period: both secrets work
        page.get_by_label("Expire the old key later").check()
        page.get_by_label("Grace period (days)").fill("3")
        page.get_by_role("button", name="Rotate", exact=True).click()
        dialog = page.get_by_role("dialog", name="The new secret of this key")
        expect(dialog).to_contain_text("The old secret keeps working until")
        rotated = page.locator("#new-secret").inner_text().strip()
        assert rotated != secret
        for s in (secret, rotated):
            assert verify(http, verifier_key, s, ["contacts:write"]) == "VALID"
        # the dialog works from the keyboard alone: Copy has focus, then the box, then Continue
        expect(dialog.get_by_role("button", name="Copy the key")).to_be_focused()
        page.keyboard.press("Tab")
        expect(dialog.get_by_label("I have stored my key")).to_be_focused()
        page.keyboard.press("Space")
        expect(dialog.get_by_label("I have stored my key")).to_be_checked()
        expect(dialog.get_by_role("button", name="Continue")).to_be_enabled()
        page.keyboard.press("Tab")
        expect(dialog.get_by_role("button", name="Continue")).to_be_focused()
        page.keyboard.press("Enter")
        page.wait_for_url("**/keys/key_*")
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.get_by_text("Previous secret works until")).to_be_visible()

        # delete, behind a confirmation that says it is immediate and final
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_text("Deleting is immediate and cannot be undone")).to_be_visible()
        accessible(page)
        page.get_by_role("button", name="Delete").click()
        page.wait_for_url("**/keys?done=deleted")
        expect(page.get_by_role("status").filter(has_text="Deleted")).to_be_visible()
        deleted_at = time.monotonic()
        for s in (secret, rotated):
            assert verify(http, verifier_key, s) == "REVOKED"
        status = 200
        while time.monotonic() - deleted_at < BOUND and status != 401:
            status = crm.get("/contacts", headers=bearer(rotated)).status_code
            time.sleep(0.05)
        assert status == 401
    finally:
        context.close()


def test_a_member_cannot_create_keys_and_another_tenants_key_is_not_found(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,
        keyplane: Keyplane) -> None:
    from playwright.sync_api import expect

    add_member(keyplane, tenant.id, "mia@example.com")
    other = make_tenant(keyplane, "Globex")
    theirs = http.get("/v1/keys", headers=auth(other.management_key)).json()["items"][0]["id"]
    context = chromium.new_context()
    page = context.new_page()
    try:
        sign_in(page, server.url, "mia@example.com", MEMBER_PASSWORD)
        expect(page.get_by_role("link", name="Create key")).to_have_count(0)
        expect(page.get_by_role("button", name="Create key")).to_have_count(0)
        accessible(page)
        page.get_by_role("link", name="ops").click()
        expect(page.get_by_label("Contacts Edit", exact=True)).to_be_disabled()
        for name in ("Rotate", "Duplicate as new key", "Lock", "Delete", "Save changes"):
            expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
        accessible(page)
        # a forged form post carrying the member's own valid CSRF token is still refused
        token = page.locator("input[name=csrf_token]").first.get_attribute("value")
        before = len(http.get("/v1/keys", headers=auth(tenant.management_key)).json()["items"])
        answer = page.request.post(server.url + "/keys", form={
            "csrf_token": token, "name": "sneaky", "expires_in_days": "30",
            "scopes": "contacts:read"})
        assert answer.status == 403 and "You cannot do this" in answer.text()
        after = len(http.get("/v1/keys", headers=auth(tenant.management_key)).json()["items"])
        assert after == before
        response = page.goto(f"{server.url}/keys/{theirs}")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    finally:
        context.close()


def test_an_admin_revokes_a_connected_app_sets_the_policy_and_reads_the_audit_log(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,
        operator_key: str, verifier_key: str, shot: Callable[..., None]) -> None:
    from playwright.sync_api import expect

    from tests.integration.test_console_pages import connect

    connection_id, token = connect(http, tenant, operator_key)
    connect(http, tenant, operator_key, name="Ledger sync", homepage="https://ledger.example")
    assert verify(http, verifier_key, token, ["contacts:read"]) == "VALID"
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    try:
        sign_in(page, server.url, tenant.admin_email, tenant.admin_password)
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Connected apps").click()
        expect(page).to_have_title("Connected apps · Acme · Keyplane")
        row = page.get_by_role("row", name="Zapier")
        expect(row).to_contain_text("Contacts Edit")
        expect(row).to_contain_text(tenant.admin_email)
        accessible(page)
        shot(page, "connections")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        shot(page, "connections-phone")
        page.set_viewport_size({"width": 1280, "height": 860})

        row.get_by_role("link", name="Revoke Zapier").click()
        expect(page).to_have_title("Revoke Zapier · Acme · Keyplane")
        expect(page.get_by_text("Automations built on this connection stop working")) \
            .to_be_visible()
        accessible(page)
        shot(page, "connection-revoke")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        assert verify(http, verifier_key, token, ["contacts:read"]) == "VALID"  # asked only
        page.get_by_role("button", name="Revoke").click()
        page.wait_for_url("**/connections?done=revoked")
        expect(page.get_by_role("status").filter(has_text="Revoked")).to_be_visible()
        expect(page.get_by_role("row", name="Zapier")).to_have_count(0)
        expect(page.get_by_role("row", name="Ledger sync")).to_have_count(1)
        assert verify(http, verifier_key, token, ["contacts:read"]) != "VALID"
        r = http.get(f"/v1/connections/{connection_id}", headers=auth(tenant.management_key))
        assert r.json()["revoked_at"] is not None

        # settings: copy the Location ID, then a policy error beside its field, then save
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Settings").click()
        expect(page).to_have_title("Settings · Acme · Keyplane")
        page.locator("main").get_by_role("button", name="Copy Location ID").click()
        assert page.evaluate("navigator.clipboard.readText()") == tenant.id
        page.get_by_label("Default lifetime (days)").fill("400")
        page.get_by_label("Maximum lifetime (days)").fill("365")
        page.get_by_label("Tenant IP allowlist").fill("127.0.0.0/8\n10.0.0.0/8")
        page.get_by_label("Lock it").check()
        page.get_by_role("button", name="Save policy").click()
        expect(page.locator("#default_expiry_days-error")).to_contain_text(
            "must not be longer than the maximum lifetime")
        expect(page.get_by_label("Default lifetime (days)")).to_be_focused()
        expect(page.get_by_label("Lock it")).to_be_checked()
        accessible(page)
        shot(page, "settings-error")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.get_by_label("Default lifetime (days)").fill("30")
        page.get_by_role("button", name="Save policy").click()
        page.wait_for_url("**/settings?done=saved")
        expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
        expect(page.get_by_label("Tenant IP allowlist")).to_have_value("127.0.0.0/8\n10.0.0.0/8")
        accessible(page)
        shot(page, "settings")
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="API keys").click()
        page.get_by_role("link", name="Create key").click()
        expect(page.get_by_label("Validity (days)")).to_have_value("30")

        # the audit log: the revoke and the policy change, by this admin, from this address
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Audit log").click()
        expect(page).to_have_title("Audit log · Acme · Keyplane")
        revoked = page.get_by_role("row").filter(has_text="connection.revoked")
        expect(revoked).to_contain_text("App connection revoked")
        expect(revoked).to_contain_text(tenant.admin_email)
        expect(revoked).to_contain_text("127.0.0.1")
        expect(page.get_by_role("row").filter(has_text="connection.created").first) \
            .to_contain_text("Partner app")
        accessible(page)
        shot(page, "audit")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.get_by_label("Action").select_option("tenant.updated")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator("tbody")).to_contain_text("Tenant updated")
    finally:
        context.close()


def test_a_member_sees_connected_apps_and_settings_read_only(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,
        keyplane: Keyplane, operator_key: str) -> None:
    from playwright.sync_api import expect

    from tests.integration.test_console_pages import connect

    connect(http, tenant, operator_key)
    add_member(keyplane, tenant.id, "mia@example.com")
    context = chromium.new_context()
    page = context.new_page()
    try:
        sign_in(page, server.url, "mia@example.com", MEMBER_PASSWORD)
        page.goto(server.url + "/connections")
        expect(page.get_by_role("row", name="Zapier")).to_be_visible()
        expect(page.get_by_role("link", name="Revoke Zapier")).to_have_count(0)
        accessible(page)
        page.goto(server.url + "/settings")
        expect(page.get_by_label("Default lifetime (days)")).not_to_be_editable()
        expect(page.get_by_label("Revoke it")).to_be_disabled()
        expect(page.get_by_role("button", name="Save policy")).to_have_count(0)
        accessible(page)
        page.goto(server.url + "/audit")
        expect(page.get_by_role("row").filter(has_text="session.signed_in").first).to_be_visible()
        accessible(page)
    finally:
        context.close()


def test_an_admin_manages_members(chromium: Any, server: RunningServer, tenant: Tenant,
                                  keyplane: Keyplane, shot: Callable[..., None]) -> None:
    from playwright.sync_api import expect

    from keyplane.core.rights import SYSTEM

    mia = add_member(keyplane, tenant.id, "mia@example.com")
    keyplane.keys.create(SYSTEM, tenant.id, {"name": "Mia's export", "owner_id": mia})
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    try:
        sign_in(page, server.url, tenant.admin_email, tenant.admin_password)
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Members").click()
        expect(page).to_have_title("Members · Acme · Keyplane")
        expect(page.get_by_role("row", name="Mia")).to_contain_text("Member")
        accessible(page)
        shot(page, "members")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})

        # the last admin: plain words beside the action
        page.get_by_role("link", name=tenant.admin_email).click()
        page.get_by_label("Member", exact=True).check()
        page.get_by_role("button", name="Save role").click()
        expect(page.locator(".field-error")).to_contain_text("they are the only admin of Acme")
        accessible(page)

        page.goto(server.url + "/members")
        page.get_by_role("link", name="Mia").click()
        page.get_by_label("Admin", exact=True).check()
        page.get_by_role("button", name="Save role").click()
        expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
        accessible(page)
        shot(page, "member-detail")
        page.get_by_role("button", name="Remove").click()
        expect(page.get_by_role("heading", name="Remove Mia?")).to_be_visible()
        expect(page.get_by_role("link", name="Mia's export")).to_be_visible()
        accessible(page)
        shot(page, "member-remove")
        page.get_by_role("button", name="Remove").click()
        page.wait_for_url("**/members?done=removed")
        expect(page.get_by_role("row", name="Mia")).to_have_count(0)

        page.get_by_role("link", name="Add member").click()
        page.get_by_label("Email").fill("noor@example")
        page.get_by_label("Password").fill("a long password 1")
        page.get_by_role("button", name="Add member").click()
        expect(page.locator("#email-error")).to_contain_text("not an email address")
        expect(page.get_by_label("Email")).to_be_focused()
        accessible(page)
        shot(page, "member-add-error")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
    finally:
        context.close()


def test_an_admin_creates_an_api_user_and_goes_straight_on_to_its_first_key(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,
        keyplane: Keyplane, verifier_key: str, shot: Callable[..., None]) -> None:
    from playwright.sync_api import expect

    from keyplane.core.rights import SYSTEM

    keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM", "scopes": ["contacts:write"]})
    keyplane.groups.create(SYSTEM, tenant.id, {"name": "Billing", "scopes": ["payments:read"]})
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    try:
        sign_in(page, server.url, tenant.admin_email, tenant.admin_password)
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="API users").click()
        expect(page).to_have_title("API users · Acme · Keyplane")
        accessible(page)
        page.get_by_role("link", name="Create API user").click()
        page.get_by_role("button", name="Create API user").click()
        expect(page.locator("#name-error")).to_contain_text("Name must not be empty")
        accessible(page)
        page.get_by_label("Name", exact=True).fill("Zapier robot")
        page.get_by_label("CRM").check()
        shot(page, "api-user-create")
        page.get_by_role("button", name="Create API user").click()

        expect(page).to_have_title("Create key · Acme · Keyplane")
        expect(page.get_by_role("status").filter(has_text="created")).to_contain_text(
            "Now create its first key")
        assert page.get_by_label("Owner").evaluate(
            "s => s.options[s.selectedIndex].text") == "Zapier robot (API user)"
        accessible(page)
        page.get_by_label("Name", exact=True).fill("Zap")
        page.get_by_label("Contacts Edit", exact=True).check()
        page.get_by_role("button", name="Create key").click()
        dialog = page.get_by_role("dialog", name="Your new API key")
        secret = page.locator("#new-secret").inner_text().strip()
        assert verify(http, verifier_key, secret, ["contacts:write"]) == "VALID"
        dialog.get_by_label("I have stored my key").check()
        dialog.get_by_role("button", name="Continue").click()

        page.goto(server.url + "/api-users")
        row = page.get_by_role("row", name="Zapier robot")
        expect(row).to_contain_text("CRM")
        accessible(page)
        shot(page, "api-users")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        page.set_viewport_size({"width": 1280, "height": 860})
        row.get_by_role("link", name="Its keys").click()
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator("tbody")).to_contain_text("Zap")
        page.goto(server.url + "/api-users")
        page.get_by_role("link", name="Zapier robot", exact=True).click()
        expect(page.get_by_role("link", name="Zap", exact=True)).to_be_visible()
        accessible(page)
        shot(page, "api-user-detail")
        page.get_by_role("button", name="Disable").click()
        expect(page.get_by_role("status").filter(has_text="Disabled")).to_be_visible()
        assert verify(http, verifier_key, secret) != "VALID"
    finally:
        context.close()
