"""The console's automations page in a real browser (Playwright driving Debian's Chromium): an
admin creates a rule for one key (an error first), the product's event then reaches a real
receiver, the admin turns the rule off and deletes it after the confirmation; a member reads.
axe-core checks every page, at desktop and phone width. Saves docs/screenshots/automations.png
with KEYPLANE_UPDATE_SCREENSHOTS=1.

Skipped when /usr/bin/chromium or Playwright is missing, except in CI
(``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where that is a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.webhook_repositories import webhook_repo
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.browser import chromium  # noqa: F401 - a fixture
from tests.integration.console_support import MEMBER_PASSWORD, add_member
from tests.integration.procs import wait_until
from tests.integration.test_console_browser import (
    PHONE,
    accessible,
    no_sideways_scroll,
    shot,  # noqa: F401 - a fixture
    sign_in,
)
from tests.support import SettableClock
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.slow]
DESKTOP = {"width": 1280, "height": 860}
Site = tuple[Keyplane, httpx2.Client, Tenant, str]


@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[Site]:
    url, schema = database
    with serving(url, schema, tmp_path, clock, webhook_allow_private_targets=True,
                 webhook_poll_seconds=0.05, expiry_interval_seconds=0) as (kp, http):
        verifier = kp.keys.create(SYSTEM, None, {"name": "product", "require_tls": False,
                                                 "scopes": ["keys:verify"]},
                                  operator=True).secret
        yield kp, http, make_tenant(kp), verifier


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    try:
        yield started
    finally:
        started.stop()


def at_phone_width(page: Any) -> None:
    page.set_viewport_size(PHONE)
    no_sideways_scroll(page)
    accessible(page)
    page.set_viewport_size(DESKTOP)


def test_an_admin_manages_an_automation_and_a_member_reads_it(
        chromium: Any, site: Site, receiver: Receiver,  # noqa: F811
        shot: Callable[..., None]) -> None:  # noqa: F811
    from playwright.sync_api import expect

    kp, http, tenant, verifier = site
    base = str(http.base_url).rstrip("/")
    issued = kp.webhooks.create(SYSTEM, tenant.id, {
        "url": receiver.url, "description": "CRM follow-up", "events": ["webhook.disabled"]})
    receiver.secrets.append(issued.secret)
    old = kp.webhooks.create(SYSTEM, tenant.id, {
        "url": "http://127.0.0.1:9/old-crm", "description": "Old CRM",
        "events": ["key.rotated", "key.expiring"]}).webhook.id
    with kp.ctx.uow() as uow:  # as the delivery worker leaves an endpoint that keeps failing
        w = webhook_repo(uow).get(tenant.id, old, for_update=True)
        assert w is not None
        w.enabled, w.disabled_reason = False, ("every delivery attempt failed for 72 hours "
                                               "(40 attempts; last: connection refused)")
        webhook_repo(uow).update(w)
        uow.commit()
    robot = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                 {"name": "Importer"}).id
    kp.automations.create(SYSTEM, tenant.id, {
        "name": "Importer updates", "event": "contact.updated", "principal_id": robot,
        "webhook_ids": [old], "enabled": False})
    web_form = kp.keys.create(SYSTEM, tenant.id, {
        "name": "Web form", "owner_id": tenant.admin_id, "require_tls": False,
        "scopes": ["contacts:write"]})
    add_member(kp, tenant.id, "mia@example.com")

    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        sign_in(page, base, tenant.admin_email, tenant.admin_password)
        page.get_by_role("navigation", name="Sections").get_by_role(
            "link", name="Automations").click()
        expect(page).to_have_title("Automations · Acme · Keyplane")
        expect(page.get_by_text("Every delivery attempt failed for 72 hours")
               ).to_be_visible()
        accessible(page)
        page.get_by_role("link", name="Create automation").click()
        expect(page).to_have_title("Create automation · Acme · Keyplane")
        page.get_by_role("button", name="Create automation").click()
        expect(page.locator("#name-error")).to_contain_text("Name must not be empty")
        accessible(page)
        page.get_by_label("Name", exact=True).fill("Incoming API - new lead")
        page.get_by_label("Event", exact=True).fill("contact.created")
        page.get_by_label("Only through this key").select_option(label="Web form")
        page.get_by_label(f"{receiver.url} (CRM follow-up)").check()
        at_phone_width(page)
        page.get_by_role("button", name="Create automation").click()

        page.wait_for_url("**/automations?done=created")
        expect(page.get_by_role("status").filter(has_text="Created.")).to_be_visible()
        row = page.get_by_role("row").filter(has_text="Incoming API - new lead")
        expect(row).to_contain_text("Contacts created through the API")
        expect(row.get_by_role("link", name="Web form")).to_have_attribute(
            "href", f"/keys/{web_form.key.id}")
        accessible(page)
        shot(page, "automations")
        at_phone_width(page)

        r = http.post("/v1/events", headers=auth(verifier), json={
            "type": "contact.created", "key": web_form.secret, "data": {"id": 42}})
        assert r.status_code == 202 and r.json()["webhook_ids"] == [issued.webhook.id], r.text
        wait_until(lambda: len(receiver.snapshot()) == 1, 10)
        assert receiver.snapshot()[0].valid_with == [True]

        page.get_by_role("button", name="Turn off Incoming API - new lead").click()
        expect(page.get_by_role("status").filter(has_text="Turned off.")).to_be_visible()
        r = http.post("/v1/events", headers=auth(verifier), json={
            "type": "contact.created", "key": web_form.secret})
        assert r.status_code == 202 and r.json()["id"] is None

        page.get_by_role("link", name="Delete Incoming API - new lead").click()
        expect(page.get_by_role("heading", name="Delete “Incoming API - new lead”?")
               ).to_be_visible()
        accessible(page)
        at_phone_width(page)
        page.get_by_role("button", name="Delete").click()
        page.wait_for_url("**/automations?done=deleted")
        expect(page.get_by_role("status").filter(has_text="Deleted.")).to_be_visible()
        expect(page.get_by_role("row").filter(has_text="Incoming API - new lead")
               ).to_have_count(0)
    finally:
        context.close()

    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        sign_in(page, base, "mia@example.com", MEMBER_PASSWORD)
        page.goto(base + "/automations")
        expect(page.get_by_text("Only an administrator can change them")).to_be_visible()
        expect(page.get_by_role("row").filter(has_text="Importer updates")).to_contain_text(
            "Importer (API user)")
        expect(page.get_by_role("link", name="Create automation")).to_have_count(0)
        expect(page.get_by_role("button", name="Turn on Importer updates")).to_have_count(0)
        accessible(page)
        at_phone_width(page)
    finally:
        context.close()
