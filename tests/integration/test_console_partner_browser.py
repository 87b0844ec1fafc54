"""The partner walk in a real browser (Playwright driving Debian's Chromium): a partner
developer signs up from an invitation and registers an app → operator staff approve it → the
developer creates the client secret → a tenant admin connects the app (consent) → it appears
in the tenant's Connected apps, and its token works. axe-core checks every new page; each is
usable at phone width; screenshots go to docs/screenshots/ with KEYPLANE_UPDATE_SCREENSHOTS=1.

Skipped when /usr/bin/chromium or Playwright is missing, except in CI
(``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant
from tests.integration import test_console_browser as console_browser
from tests.integration import test_oauth_browser as oauth_browser
from tests.integration.test_console_browser import PHONE, accessible, no_sideways_scroll
from tests.integration.test_console_partner import STAFF_EMAIL, STAFF_PASSWORD, add_staff
from tests.integration.test_oauth_browser import Callback
from tests.support import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
callback = oauth_browser.callback  # the partner app's redirect endpoint (a fixture)
shot = console_browser.shot  # saves the README's screenshots (a fixture)
DEV_EMAIL = "dev@zap.example"
DEV_PASSWORD = "developer password 1"


def checked(page: Any, shot_name: str | None = None, save: Callable[..., None] | None = None,
            *, phone: bool = True) -> None:
    """axe-core finds nothing serious; no sideways scroll at phone width."""
    accessible(page)
    if save is not None and shot_name:
        save(page, shot_name)
    if phone:
        size = page.viewport_size
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        accessible(page)
        page.set_viewport_size(size)


def test_partner_registers_operator_approves_admin_connects(
        chromium: Any, server: RunningServer, http: httpx2.Client, keyplane: Keyplane,
        tenant: Tenant, callback: Callback, shot: Callable[..., None]) -> None:
    from authlib.integrations.httpx_client import OAuth2Client
    from playwright.sync_api import expect

    from keyplane.core.rights import SYSTEM

    add_staff(keyplane)
    base = server.url

    # 1. the operator's staff invite the developer from the console
    staff_ctx = chromium.new_context(viewport={"width": 1280, "height": 860})
    staff = staff_ctx.new_page()
    dev_ctx = chromium.new_context(viewport={"width": 1280, "height": 860})
    dev = dev_ctx.new_page()
    admin_ctx = chromium.new_context(viewport={"width": 1280, "height": 860})
    admin = admin_ctx.new_page()
    try:
        staff.goto(base + "/")
        staff.get_by_label("Email").fill(STAFF_EMAIL)
        staff.get_by_label("Password").fill(STAFF_PASSWORD)
        staff.get_by_role("button", name="Sign in").click()
        staff.wait_for_url("**/operator/apps")
        expect(staff).to_have_title("Partner apps · Operator · Keyplane")
        expect(staff.get_by_text("No app is waiting for your decision.")).to_be_visible()
        checked(staff, "operator-apps-empty", None)
        staff.get_by_role("link", name="Partner developers").click()
        expect(staff).to_have_title("Partner developers · Operator · Keyplane")
        staff.get_by_label("Email").fill(DEV_EMAIL)
        staff.get_by_role("button", name="Invite").click()
        link = staff.locator("#invite-link").inner_text().strip()
        assert link.startswith(keyplane.settings.base_url + "/partners/signup?invitation=")
        checked(staff, "operator-partners", shot)

        # 2. the developer signs up from the link and registers an app
        dev.goto(base + link.removeprefix(keyplane.settings.base_url))
        expect(dev).to_have_title("Create a partner developer account · Keyplane")
        expect(dev.get_by_label("Email")).to_have_value(DEV_EMAIL)
        checked(dev, "partner-signup", shot)
        dev.get_by_label("Your name or company").fill("Zap Inc")
        dev.get_by_label("Password").fill(DEV_PASSWORD)
        dev.get_by_role("button", name="Create account").click()
        dev.wait_for_url("**/partners/apps/new")
        expect(dev).to_have_title("Register an app · Partner developers · Keyplane")
        # a mistake is shown beside its field, in plain words
        dev.get_by_label("Name").fill("Zap")
        dev.get_by_label("Homepage").fill("http://zap.example")
        dev.get_by_label("Redirect URIs").fill(callback.url)
        dev.get_by_label("Contacts Edit").check()
        expect(dev.get_by_label("Contacts View")).to_be_checked()  # Edit ticks View
        dev.get_by_role("button", name="Register app").click()
        expect(dev.locator("#homepage-error")).to_contain_text("must use https")
        expect(dev.get_by_label("Homepage")).to_have_attribute("aria-invalid", "true")
        checked(dev, None, None)
        dev.get_by_label("Homepage").fill("https://zap.example")
        checked(dev, "partner-app-new", shot)
        dev.get_by_role("button", name="Register app").click()
        dev.wait_for_url("**/partners/apps/app_*")
        expect(dev.locator(".status-line")).to_contain_text("Waiting for the operator")
        expect(dev.get_by_role("button", name="Rotate client secret")).to_have_count(0)
        checked(dev, "partner-app-pending", shot)
        app_id = dev.url.rsplit("/", 1)[1].split("?")[0]

        # 3. operator staff approve it, after a confirmation
        staff.get_by_role("link", name="Partner apps").click()
        expect(staff.get_by_role("row", name="Zap")).to_contain_text("Pending")
        checked(staff, "operator-apps", shot)
        staff.get_by_role("link", name="Review Zap").click()
        expect(staff).to_have_title("Zap · Operator · Keyplane")
        expect(staff.get_by_text("Zap Inc (dev@zap.example), partner developer")).to_be_visible()
        checked(staff, "operator-app", shot)
        staff.get_by_role("link", name="Approve").click()
        expect(staff.get_by_role("heading", name="Approve “Zap”?")).to_be_visible()
        checked(staff, "operator-app-approve", shot)
        staff.get_by_role("button", name="Approve").click()
        expect(staff.locator("p.notice")).to_have_text("Approved.")

        # the other operator pages, each checked
        for link_name, title, name in (("Tenants", "Tenants", "operator-tenants"),
                                       ("Scope catalogue", "Scope catalogue", "operator-scopes"),
                                       ("Operator keys", "Operator keys", "operator-keys")):
            staff.get_by_role("link", name=link_name).click()
            expect(staff).to_have_title(f"{title} · Operator · Keyplane")
            checked(staff, name, shot)
        # the confirmations, each checked and left without a change
        staff.get_by_role("link", name="Tenants").click()
        staff.get_by_role("link", name="Disable Acme").click()
        expect(staff.get_by_role("heading", name="Disable “Acme”?")).to_be_visible()
        checked(staff, "operator-tenant-disable", shot)
        staff.get_by_role("link", name="Cancel, keep it enabled").click()
        expect(staff.get_by_role("row", name="Acme")).to_contain_text("Active")
        staff.get_by_role("link", name="Operator keys").click()
        staff.get_by_label("Name").fill("edge-gateway")
        staff.get_by_role("button", name="Create key").click()
        dialog = staff.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_role("button", name="Continue")).to_be_disabled()
        accessible(staff)
        shot(staff, "operator-key-secret", full_page=False)
        dialog.get_by_label("I have stored my key").check()
        dialog.get_by_role("button", name="Continue").click()
        expect(staff.get_by_role("row", name="edge-gateway")).to_be_visible()
        staff.get_by_role("link", name="Revoke edge-gateway").click()
        expect(staff.get_by_role("heading", name="Revoke “edge-gateway”?")).to_be_visible()
        checked(staff, "operator-key-revoke", shot)
        staff.get_by_role("button", name="Revoke").click()
        expect(staff.locator("p.notice")).to_contain_text("Operator key revoked")
        expect(staff.get_by_role("row", name="edge-gateway")).to_have_count(0)

        # 4. the developer sees it approved and creates the client secret (shown once)
        dev.reload()
        expect(dev.locator(".status-line")).to_contain_text("Approved")
        dev.get_by_role("button", name="Rotate client secret").click()
        dialog = dev.get_by_role("dialog")
        expect(dialog).to_be_visible()
        secret = dialog.locator("#new-secret").inner_text().strip()
        accessible(dev)
        shot(dev, "partner-client-secret", full_page=False)
        dialog.get_by_label("I have stored the client secret").check()
        dialog.get_by_role("button", name="Continue").click()
        expect(dev.get_by_role("dialog")).to_have_count(0)
        assert secret not in dev.content()
        client_id = dev.locator("#client-id").inner_text().strip()
        checked(dev, "partner-app-approved", shot)
        dev.get_by_role("link", name="OAuth guide").click()
        checked(dev, "partner-guide", shot)
        dev.get_by_role("link", name="Your apps").click()
        expect(dev.get_by_role("row", name="Zap")).to_contain_text("Approved")
        checked(dev, "partner-apps", shot)

        # 5. a tenant admin connects it in the browser (consent)
        meta = http.get("/.well-known/oauth-authorization-server").json()
        authorize = meta["authorization_endpoint"].replace(meta["issuer"], base)
        token_url = meta["token_endpoint"].replace(meta["issuer"], base)
        oauth = OAuth2Client(client_id, secret, redirect_uri=callback.url,
                             scope="contacts:read contacts:write",
                             code_challenge_method="S256",
                             token_endpoint_auth_method="client_secret_basic")
        try:
            verifier = "v" + os.urandom(40).hex()
            url, state = oauth.create_authorization_url(authorize, code_verifier=verifier)
            admin.goto(url)
            admin.wait_for_url("**/signin?next=*")
            admin.fill("#email", tenant.admin_email)
            admin.fill("#password", tenant.admin_password)
            admin.click("button[type=submit]")
            admin.wait_for_url("**/oauth/authorize?*")
            assert admin.inner_text("#app-name") == "Zap"
            admin.click("button[value=allow]")
            assert callback.arrived.wait(15), "the browser never reached the app's callback"
            received = callback.url.replace("/callback", "") + callback.received[0]
            token = oauth.fetch_token(token_url, authorization_response=received, state=state,
                                      code_verifier=verifier)
        finally:
            oauth.close()
        assert token["scope"] == "contacts:read contacts:write"

        # 6. it appears in the tenant's Connected apps
        admin.goto(base + "/connections")
        expect(admin.get_by_role("row", name="Zap")).to_contain_text("Contacts Edit")
        expect(admin.get_by_role("link", name="Revoke Zap")).to_be_visible()
        accessible(admin)
        views = keyplane.connections.list(SYSTEM, tenant.id, limit=10)
        assert [v.app.id for v in views.items] == [app_id]
    finally:
        staff_ctx.close()
        dev_ctx.close()
        admin_ctx.close()
