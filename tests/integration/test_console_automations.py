"""The console's automations page over plain HTTP (a cookie-keeping client, no browser): an
admin creates a rule (errors beside their fields), and the product's ``POST /v1/events``
then fires it to a real receiver, through its key filter only; turning it off stops it;
deleting it asks first. The page names what a rule listens to (key, API user, connected app)
and lists the tenant's webhooks with why a disabled one stopped. Members read only; another
tenant's ids are not found; every form needs its CSRF token. The browser walk-through is in
test_console_automations_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.webhook_repositories import webhook_repo
from keyplane.web.console.automations import activity
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.console_support import (
    MEMBER_PASSWORD,
    add_member,
    form_token,
    signed_in,
)
from tests.integration.oauth_support import approved_app, exchange, get_code
from tests.integration.procs import wait_until
from tests.support import SettableClock
from tests.webhook_receiver import Receiver

Site = tuple[Keyplane, httpx2.Client, Tenant, str]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    try:
        yield started
    finally:
        started.stop()


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


def add_webhook(kp: Keyplane, tenant: Tenant, url: str, description: str = "",
                receiver: Receiver | None = None) -> str:
    """A webhook subscribed to nothing that happens in these tests: only rules send to it."""
    issued = kp.webhooks.create(SYSTEM, tenant.id, {"url": url, "description": description,
                                                    "events": ["webhook.disabled"]})
    if receiver is not None:
        receiver.secrets.append(issued.secret)
    return issued.webhook.id


def field_error(html: str, field: str) -> str:
    found = re.search(rf'<p class="field-error" id="{field}-error"><span class="sr-only">'
                      r'Error: </span>([^<]+)</p>', html)
    assert found, f"no error beside {field}"
    return unescape(found.group(1))


def rules_of(kp: Keyplane, tenant: Tenant) -> list[object]:
    return list(kp.automations.list(SYSTEM, tenant.id, limit=100, cursor=None).items)


def report(http: httpx2.Client, verifier: str, event: str, key: str) -> httpx2.Response:
    r = http.post("/v1/events", json={"type": event, "key": key, "data": {"id": 7}},
                  headers=auth(verifier))
    assert r.status_code == 202, r.text
    return r


def test_an_admin_creates_a_rule_that_then_fires_through_v1_events(
        site: Site, receiver: Receiver) -> None:
    kp, http, tenant, verifier = site
    hook = add_webhook(kp, tenant, receiver.url, "CRM follow-up", receiver)
    web_form = kp.keys.create(SYSTEM, tenant.id, {"name": "Web form", "require_tls": False,
                                                  "owner_id": tenant.admin_id,
                                                  "scopes": ["contacts:write"]})
    other_key = kp.keys.create(SYSTEM, tenant.id, {"name": "Importer", "require_tls": False,
                                                   "owner_id": tenant.admin_id,
                                                   "scopes": ["contacts:write"]})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    empty = http.get("/automations")
    assert empty.status_code == 200
    assert "<title>Automations · Acme · Keyplane</title>" in empty.text
    assert 'aria-current="page">Automations' in empty.text
    assert "There are no automations yet" in empty.text
    assert receiver.url in empty.text and "CRM follow-up" in empty.text
    form = http.get("/automations/new")
    assert form.status_code == 200
    assert f'<option value="{web_form.key.id}">Web form</option>' in form.text
    assert f'name="webhook_ids" value="{hook}"' in form.text
    token = form_token(http, "/automations/new")

    # errors beside their fields, in plain words, and what was typed is kept
    r = http.post("/automations", data={"csrf_token": token, "name": " ",
                                        "event": "contact created", "enabled": "on"})
    assert r.status_code == 422
    assert field_error(r.text, "name") == "Name must not be empty."
    r = http.post("/automations", data={"csrf_token": token, "name": "New lead",
                                        "event": "contact created", "webhook_ids": [hook]})
    assert r.status_code == 422
    assert field_error(r.text, "event").startswith("Type an event type (contact.created)")
    assert 'value="New lead"' in r.text and f'value="{hook}" checked' in r.text
    r = http.post("/automations", data={"csrf_token": token, "name": "New lead",
                                        "event": "contact.created"})
    assert r.status_code == 422
    assert field_error(r.text, "webhook_ids") == (
        "Choose at least one webhook to send the event to.")
    assert rules_of(kp, tenant) == []

    r = http.post("/automations", data={
        "csrf_token": token, "name": "Incoming API - new lead", "event": "contact.created",
        "key_id": web_form.key.id, "webhook_ids": [hook], "enabled": "on"},
        follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/automations?done=created"
    [made] = kp.automations.list(SYSTEM, tenant.id, limit=10, cursor=None).items
    assert (made.event, made.key_id, made.webhook_ids, made.enabled) == (
        "contact.created", web_form.key.id, [hook], True)
    listed = http.get(r.headers["location"]).text
    assert "Created. It fires for the next matching event" in listed
    assert "Contacts created through the API" in listed and "<code>contact.created</code>" in listed
    assert f'Only through the key <a href="/keys/{web_form.key.id}">Web form</a>' in listed
    assert f"<code>{receiver.url}</code> (CRM follow-up)" in listed

    # the rule fires for its key, and not for another key or another verb
    r = report(http, verifier, "contact.created", web_form.secret)
    assert r.json()["automation_ids"] == [made.id]
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    got = receiver.snapshot()[0]
    assert got.type == "contact.created" and got.valid_with == [True]
    assert got.payload["data"]["object"] == {"id": 7}
    assert report(http, verifier, "contact.created", other_key.secret).json()["id"] is None
    assert report(http, verifier, "contact.updated", web_form.secret).json()["id"] is None

    # turned off, it sends nothing; on again, it fires again
    r = http.post(f"/automations/{made.id}/enabled",
                  data={"csrf_token": token, "enabled": "false"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/automations?done=disabled"
    assert "Turned off" in http.get(r.headers["location"]).text
    assert report(http, verifier, "contact.created", web_form.secret).json()["id"] is None
    r = http.post(f"/automations/{made.id}/enabled",
                  data={"csrf_token": token, "enabled": "true"}, follow_redirects=False)
    assert r.status_code == 303
    assert report(http, verifier, "contact.created", web_form.secret).json()["automation_ids"] \
        == [made.id]
    wait_until(lambda: len(receiver.snapshot()) == 2, 10)

    # deleting asks first, then the rule is gone and fires no more
    confirm = http.get(f"/automations/{made.id}/delete")
    assert confirm.status_code == 200
    assert "Delete “Incoming API - new lead”?" in confirm.text
    assert "Contacts created through the API" in confirm.text
    r = http.post(f"/automations/{made.id}/delete", data={"csrf_token": token},
                  follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/automations?done=deleted"
    assert rules_of(kp, tenant) == []
    assert report(http, verifier, "contact.created", web_form.secret).json()["id"] is None
    time.sleep(0.3)  # the worker polls every 0.05 s: anything queued would have gone by now
    assert len(receiver.snapshot()) == 2


def test_the_page_names_api_users_and_apps_and_says_why_a_webhook_stopped(
        site: Site) -> None:
    kp, http, tenant, _verifier = site
    live = add_webhook(kp, tenant, "http://127.0.0.1:9/live", "Billing")
    dead = add_webhook(kp, tenant, "http://127.0.0.1:9/dead", "Old CRM")
    with kp.ctx.uow() as uow:
        w = webhook_repo(uow).get(tenant.id, dead, for_update=True)
        assert w is not None
        w.enabled = False
        w.disabled_reason = "every delivery attempt failed for 72 hours (40 attempts; " \
                            "last: HTTP 500)"
        webhook_repo(uow).update(w)
        uow.commit()
    bot = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                               {"name": "Importer"}).id
    kp.automations.create(SYSTEM, tenant.id, {
        "name": "Updated by the importer", "event": "contact.updated", "principal_id": bot,
        "webhook_ids": [live, dead], "enabled": False})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get("/automations").text
    assert "Contacts updated through the API" in page
    assert f'Only through <a href="/api-users/{bot}">Importer (API user)</a>' in page
    assert "<code>http://127.0.0.1:9/dead</code> (Old CRM) <span class=\"badge warn\">" \
           "disabled</span>" in page
    assert ('<span class="pill state-locked">Disabled</span><span class="sub">Every delivery '
            "attempt failed for 72 hours (40 attempts; last: HTTP 500).</span>") in page
    assert 'class="pill state-locked">Off</span>' in page
    assert "Turn on<span class=\"sr-only\"> Updated by the importer" in page


def test_a_rule_for_a_connected_app_fires_for_its_access_tokens_only(
        site: Site, receiver: Receiver) -> None:
    kp, http, tenant, verifier = site
    hook = add_webhook(kp, tenant, receiver.url, "Partner sync", receiver)
    operator = kp.keys.create(SYSTEM, None, {"name": "platform", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    partner = approved_app(http, tenant.management_key, operator, name="Zapier")
    code, code_verifier = get_code(http, partner, tenant.admin_email, tenant.admin_password)
    token = exchange(http, partner, code, code_verifier)
    assert token.status_code == 200, token.text
    access = token.json()["access_token"]
    form = http.get("/automations/new").text  # signed in by the consent above
    assert f'<option value="{partner.app_id}">Zapier</option>' in form
    r = http.post("/automations", data={
        "csrf_token": form_token(http, "/automations/new"), "name": "Zapier updates",
        "event": "contact.updated", "app_id": partner.app_id, "webhook_ids": [hook],
        "enabled": "on"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    listed = http.get("/automations").text
    assert 'Only through the connected app <a href="/connections">Zapier</a>' in listed
    assert report(http, verifier, "contact.updated", tenant.management_key).json()["id"] is None
    fired = report(http, verifier, "contact.updated", access).json()
    assert fired["app_id"] == partner.app_id and fired["webhook_ids"] == [hook]
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    assert receiver.snapshot()[0].payload["data"]["via"]["app_id"] == partner.app_id


def test_a_rule_says_in_words_what_it_listens_to() -> None:
    assert activity("contact.created") == "Contacts created through the API"
    assert activity("opportunity.updated") == "Opportunities updated through the API"
    assert activity("contact.*") == "Contacts changed through the API"
    assert activity("*.created") == "Any record created through the API"


def test_members_read_only(site: Site) -> None:
    kp, http, tenant, _verifier = site
    hook = add_webhook(kp, tenant, "http://127.0.0.1:9/hooks", "CRM")
    made = kp.automations.create(SYSTEM, tenant.id, {
        "name": "New lead", "event": "contact.created", "webhook_ids": [hook]})
    add_member(kp, tenant.id, "mia@example.com")
    r = http.get("/automations", follow_redirects=False)  # signed out: sign in first
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fautomations"
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    page = http.get("/automations")
    assert page.status_code == 200 and "New lead" in page.text
    assert "Only an administrator can change them" in page.text
    assert "/automations/new" not in page.text and "Turn off" not in page.text
    assert f"/automations/{made.id}/delete" not in page.text
    assert http.get("/automations/new").status_code == 403
    assert http.get(f"/automations/{made.id}/delete").status_code == 403
    token = form_token(http, "/automations")
    r = http.post("/automations", data={"csrf_token": token, "name": "Mine",
                                        "event": "contact.created", "webhook_ids": [hook]})
    assert r.status_code == 403 and "Nothing was changed" in r.text
    r = http.post(f"/automations/{made.id}/enabled",
                  data={"csrf_token": token, "enabled": "false"})
    assert r.status_code == 403
    assert http.post(f"/automations/{made.id}/delete",
                     data={"csrf_token": token}).status_code == 403
    [still] = rules_of(kp, tenant)
    assert still.enabled is True  # type: ignore[attr-defined]


def test_another_tenants_ids_are_not_found_and_forms_need_their_token(site: Site) -> None:
    kp, http, tenant, _verifier = site
    mine = add_webhook(kp, tenant, "http://127.0.0.1:9/mine", "Mine")
    other = make_tenant(kp, "Globex")
    theirs = add_webhook(kp, other, "http://127.0.0.1:9/theirs", "Theirs")
    their_key = kp.keys.create(SYSTEM, other.id, {"name": "Their key",
                                                  "owner_id": other.admin_id,
                                                  "scopes": ["contacts:write"]}).key.id
    their_rule = kp.automations.create(SYSTEM, other.id, {
        "name": "Their rule", "event": "contact.created", "webhook_ids": [theirs]})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get("/automations").text
    assert "Their rule" not in page and "theirs" not in page
    form = http.get("/automations/new").text
    assert theirs not in form and their_key not in form
    token = form_token(http, "/automations")

    assert http.get(f"/automations/{their_rule.id}/delete").status_code == 404
    r = http.post(f"/automations/{their_rule.id}/enabled",
                  data={"csrf_token": token, "enabled": "false"})
    assert r.status_code == 404 and "There is nothing here" in r.text
    assert http.post(f"/automations/{their_rule.id}/delete",
                     data={"csrf_token": token}).status_code == 404
    r = http.post("/automations", data={"csrf_token": token, "name": "Sneaky",
                                        "event": "contact.created", "webhook_ids": [theirs]})
    assert r.status_code == 422
    assert field_error(r.text, "webhook_ids").startswith("Choose webhooks from the list")
    r = http.post("/automations", data={"csrf_token": token, "name": "Sneaky",
                                        "event": "contact.created", "key_id": their_key,
                                        "webhook_ids": [mine]})
    assert r.status_code == 422
    assert field_error(r.text, "key_id").startswith("Choose a key from the list")
    r = http.post("/automations", data={"csrf_token": token, "name": "Sneaky",
                                        "event": "contact.created", "app_id": "app_nothere",
                                        "webhook_ids": [mine]})
    assert r.status_code == 422
    assert field_error(r.text, "app_id").startswith("Choose a connected app from the list")
    assert rules_of(kp, tenant) == []
    [theirs_still] = rules_of(kp, other)
    assert theirs_still.enabled is True  # type: ignore[attr-defined]

    # CSRF: without the form's token nothing is created, switched or deleted
    mine_rule = kp.automations.create(SYSTEM, tenant.id, {
        "name": "Mine", "event": "contact.created", "webhook_ids": [mine]})
    for path, data in [("/automations", {"name": "No token", "event": "contact.created",
                                         "webhook_ids": mine}),
                       (f"/automations/{mine_rule.id}/enabled", {"enabled": "false"}),
                       (f"/automations/{mine_rule.id}/delete", {})]:
        for bad in ({}, {"csrf_token": "forged"}):
            r = http.post(path, data={**data, **bad})
            assert r.status_code == 400 and "This form has expired" in r.text, path
    [kept] = rules_of(kp, tenant)
    assert kept.name == "Mine" and kept.enabled is True  # type: ignore[attr-defined]


def test_a_rules_filters_are_named_beyond_the_pickers_choices(
        site: Site, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyplane.web.console import automations as console_automations
    from keyplane.web.console import keys as console_keys

    kp, http, tenant, _verifier = site
    # the pickers offer the newest principals and keys only (2000 and 1000; 1 and 2 here)
    monkeypatch.setattr(console_keys, "MAX_PRINCIPALS", 1)
    monkeypatch.setattr(console_automations, "MAX_SHOWN", 2)
    robot = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                 {"name": "Old robot"})
    kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT, {"name": "New one"})
    old_key = kp.keys.create(SYSTEM, tenant.id, {"name": "Old key",
                                                  "owner_id": tenant.admin_id}).key
    for n in range(2):
        kp.keys.create(SYSTEM, tenant.id, {"name": f"New key {n}", "owner_id": tenant.admin_id})
    hook = add_webhook(kp, tenant, receiver.url, "CRM", receiver)
    for body in ({"principal_id": robot.id}, {"key_id": old_key.id}):
        r = http.post("/v1/automations", headers=auth(tenant.management_key), json={
            "name": f"only {body}", "event": "contact.created", "webhook_ids": [hook], **body})
        assert r.status_code == 201, r.text
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get("/automations").text
    assert "Old robot (API user)" in page and ">Old key<" in page
    assert "no longer exists" not in page
