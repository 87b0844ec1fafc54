"""The console's data access groups and a key's usage in a real browser (Playwright driving
Debian's Chromium): an admin creates a group with the scope grid, puts an API user in it (its
key narrows at once), takes it out after the confirmation, deletes the group; a key's page
draws its requests per day and lists its last denials. axe-core checks every page, at desktop
and phone width.

Skipped when /usr/bin/chromium or Playwright is missing, except in CI
(``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where that is a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant
from tests.integration.browser import chromium  # noqa: F401 - a fixture
from tests.integration.console_support import MEMBER_PASSWORD, add_member, verify
from tests.integration.test_console_browser import (
    PHONE,
    accessible,
    no_sideways_scroll,
    shot,  # noqa: F401 - a fixture
    sign_in,
)
from tests.support import RunningServer, SettableClock

pytestmark = [pytest.mark.browser, pytest.mark.slow]
DESKTOP = {"width": 1280, "height": 860}


def at_phone_width(page: Any) -> None:
    page.set_viewport_size(PHONE)
    no_sideways_scroll(page)
    accessible(page)
    page.set_viewport_size(DESKTOP)


def test_an_admin_manages_a_data_access_group(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,  # noqa: F811
        keyplane: Keyplane, verifier_key: str, shot: Callable[..., None]) -> None:  # noqa: F811
    from playwright.sync_api import expect

    start = keyplane.groups.create(SYSTEM, tenant.id, {  # an API user needs a group for data
        "name": "Start", "scopes": ["contacts:write", "payments:write"]}).id
    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "Zapier robot", "group_ids": [start]}).id
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "Zap", "owner_id": robot, "scopes": ["contacts:write", "payments:write"]})
    add_member(keyplane, tenant.id, "mia@example.com")
    assert verify(http, verifier_key, issued.secret, ["payments:write"]) == "VALID"
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        sign_in(page, server.url, tenant.admin_email, tenant.admin_password)
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Groups").click()
        expect(page).to_have_title("Data access groups · Acme · Keyplane")
        accessible(page)
        page.get_by_role("link", name="Create group").click()
        expect(page).to_have_title("Create group · Acme · Keyplane")
        page.get_by_role("button", name="Create group").click()
        expect(page.locator("#name-error")).to_contain_text("Name must not be empty")
        accessible(page)
        page.get_by_label("Name", exact=True).fill("Sales")
        page.get_by_label("Description").fill("The sales team and its integrations")
        page.get_by_label("Contacts Edit", exact=True).check()
        expect(page.get_by_label("Contacts View", exact=True)).to_be_checked()  # Edit ticks View
        page.get_by_label("Opportunities View", exact=True).check()
        expect(page.get_by_label("Keys View", exact=True)).to_have_count(0)  # data areas only
        shot(page, "group-create")
        at_phone_width(page)
        page.get_by_role("button", name="Create group").click()

        expect(page).to_have_title("Sales · Acme · Keyplane")
        expect(page.get_by_role("status").filter(has_text="Created.")).to_be_visible()
        page.get_by_label("Add a member or API user").select_option(
            label="Zapier robot (API user)")
        page.get_by_role("button", name="Add to group").click()
        expect(page.get_by_role("status").filter(has_text="Added.")).to_be_visible()
        page.get_by_label("Add a member or API user").select_option(
            label="Mia (mia@example.com)")
        page.get_by_role("button", name="Add to group").click()
        expect(page.get_by_role("list", name="API users")).to_contain_text("Zapier robot")
        expect(page.get_by_role("list", name="Members")).to_contain_text("Mia")
        keyplane.groups.remove_member(SYSTEM, tenant.id, start, robot)  # Sales alone now
        # the robot's key reaches only the group's areas, at once
        assert verify(http, verifier_key, issued.secret, ["payments:write"]) == \
            "INSUFFICIENT_SCOPE"
        assert verify(http, verifier_key, issued.secret, ["contacts:write"]) == "VALID"
        accessible(page)
        shot(page, "group-detail")
        at_phone_width(page)

        page.get_by_label("Payments View", exact=True).check()
        page.get_by_label("Name", exact=True).fill("Sales and billing")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("status").filter(has_text="Saved.")).to_be_visible()
        expect(page.get_by_role("heading", level=1)).to_have_text("Sales and billing")
        assert verify(http, verifier_key, issued.secret, ["payments:read"]) == "VALID"

        page.get_by_role("link", name="Remove Zapier robot from Sales and billing").click()
        expect(page.get_by_role("heading", name="Remove Zapier robot from Sales and billing?")
               ).to_be_visible()
        expect(page.get_by_text("This is their only group.")).to_be_visible()
        expect(page.get_by_text("reaches no data at all")).to_be_visible()
        accessible(page)
        shot(page, "group-remove")
        page.get_by_role("button", name="Remove").click()
        expect(page.get_by_role("status").filter(has_text="Removed from the group.")
               ).to_be_visible()
        # an API user in no group reaches no data (api_users_need_group, on by default)
        assert verify(http, verifier_key, issued.secret, ["payments:read"]) == \
            "INSUFFICIENT_SCOPE"

        # deleting: refused while Mia is in it, then confirmed
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_role("alert")).to_contain_text("This group still has members.")
        accessible(page)
        page.get_by_role("link", name="Back to Sales and billing").click()
        page.get_by_role("link", name="Remove Mia from Sales and billing").click()
        page.get_by_role("button", name="Remove").click()
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_role("heading", name="Delete “Sales and billing”?")).to_be_visible()
        accessible(page)
        page.get_by_role("button", name="Delete").click()
        page.wait_for_url("**/groups?done=deleted")
        expect(page.get_by_role("status").filter(has_text="Deleted.")).to_be_visible()
        expect(page.get_by_role("link", name="Sales and billing")).to_have_count(0)
        expect(page.get_by_role("link", name="Start", exact=True)).to_be_visible()
    finally:
        context.close()


def test_a_member_reads_a_group_and_a_key_page_shows_usage_and_denials(
        chromium: Any, server: RunningServer, http: httpx2.Client, tenant: Tenant,  # noqa: F811
        keyplane: Keyplane, verifier_key: str, clock: SettableClock,
        shot: Callable[..., None]) -> None:  # noqa: F811
    from playwright.sync_api import expect

    keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM", "scopes": ["contacts:write"]})
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "Nightly export", "owner_id": tenant.admin_id, "scopes": ["contacts:read"],
        "allowed_ips": ["203.0.113.0/24"]})
    clock.advance(days=-12)  # a nightly job's last twelve days: two or three requests a day
    earlier = 0
    for day in range(12):
        for _ in range(2 + day % 2):
            r = http.post("/v1/verify", headers={"Authorization": f"Bearer {verifier_key}"},
                          json={"key": issued.secret, "ip": "203.0.113.5", "tls": True,
                                "scopes": ["contacts:read"]})
            assert r.json()["code"] == "VALID"
            earlier += 1
        clock.advance(days=1)
    for _ in range(5):
        assert verify(http, verifier_key, issued.secret) != "VALID"  # no address given
    r = http.post("/v1/verify", headers={"Authorization": f"Bearer {verifier_key}"},
                  json={"key": issued.secret, "ip": "203.0.113.5", "tls": True,
                        "scopes": ["contacts:write"]})
    assert r.json()["code"] == "INSUFFICIENT_SCOPE"
    for _ in range(3):
        r = http.post("/v1/verify", headers={"Authorization": f"Bearer {verifier_key}"},
                      json={"key": issued.secret, "ip": "203.0.113.5", "tls": True})
        assert r.json()["code"] == "VALID"
    keyplane.usage.flush()
    add_member(keyplane, tenant.id, "mia@example.com", role="read_only")
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        sign_in(page, server.url, "mia@example.com", MEMBER_PASSWORD)
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Groups").click()
        expect(page.get_by_role("link", name="Create group")).to_have_count(0)
        page.get_by_role("link", name="CRM").click()
        expect(page.get_by_label("Contacts Edit", exact=True)).to_be_disabled()
        expect(page.get_by_role("button", name="Save changes")).to_have_count(0)
        expect(page.get_by_role("button", name="Delete")).to_have_count(0)
        accessible(page)

        page.goto(server.url + "/keys")
        page.get_by_role("link", name="Nightly export").click()
        chart = page.get_by_role("img", name="Requests per day over the last 30 days, by outcome")
        expect(chart).to_be_visible()
        expect(chart).to_have_accessible_description(
            f"{earlier + 9} requests in the last 30 days ({earlier + 3} allowed, 1 missing "
            "scope, 5 address not allowed); 6 refused. The busiest day was "
            + clock.now().strftime("%-d %B") + ", with 9.")
        page.get_by_text("Show the numbers as a table").click()
        numbers = page.get_by_role("region", name="Requests per day, in numbers")
        expect(numbers.get_by_role("row")).to_have_count(1 + 13)  # the days with requests
        expect(numbers.get_by_role("row").nth(1)).to_contain_text("9")
        denials = page.get_by_role("region", name="Last denials, newest first")
        expect(denials.get_by_role("row")).to_have_count(1 + 6)
        expect(denials.get_by_role("row").nth(1)).to_contain_text(
            "Missing scope: contacts:write")
        expect(denials).to_contain_text("The client address is not in the key's allowlist")
        for name in ("Rotate", "Duplicate as new key", "Delete", "Lock"):
            expect(page.get_by_role("button", name=name)).to_have_count(0)
        accessible(page)
        shot(page, "key-usage")
        at_phone_width(page)
    finally:
        context.close()
