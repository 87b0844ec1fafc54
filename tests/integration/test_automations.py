"""Automations, the seed's Infusionsoft action sets: the product reports what its API did
(``POST /v1/events`` with a verifier credential and the caller's key), and the tenant's rules
send it to their webhooks, verified by a real receiver with ``standardwebhooks``. A rule for
records created through the API and one for records updated through it; another tenant's
rules and webhooks never fire and cannot be named. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.helpers import create_key
from tests.integration.oauth_support import approved_app, exchange, get_code, register
from tests.integration.procs import wait_until
from tests.support import SettableClock
from tests.webhook_receiver import Receiver

Site = tuple[Keyplane, httpx2.Client, Tenant, str]


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started = [Receiver().start() for _ in range(3)]
    try:
        yield started
    finally:
        for r in started:
            r.stop()


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


def webhook(http: httpx2.Client, tenant: Tenant, receiver: Receiver) -> str:
    r = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["webhook.disabled"],
                                         "description": "CRM follow-up"},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    receiver.secrets.append(r.json()["secret"])
    return str(r.json()["id"])


def rule(http: httpx2.Client, tenant: Tenant, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/automations", json=body, headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def report(http: httpx2.Client, verifier: str, **body: Any) -> httpx2.Response:
    return http.post("/v1/events", json=body, headers=auth(verifier))


def test_a_contact_created_through_the_api_fires_the_created_rule_only(
    site: Site, receivers: list[Receiver]
) -> None:
    _kp, http, tenant, verifier = site
    created_hook = webhook(http, tenant, receivers[0])
    updated_hook = webhook(http, tenant, receivers[1])
    created = rule(http, tenant, name="Incoming API - new lead", event="contact.created",
                   webhook_ids=[created_hook])
    updated = rule(http, tenant, name="Incoming API - updated lead", event="contact.updated",
                   webhook_ids=[updated_hook])
    assert created["event"] == "contact.created" and created["enabled"] is True
    assert created["webhook_ids"] == [created_hook] and created["tenant_id"] == tenant.id
    key = create_key(http, tenant.management_key, name="Web form", scopes=["contacts:write"])

    lead = {"id": 42, "email": "ada@example.com", "source": "web form"}
    r = report(http, verifier, type="contact.created", key=key["key"], data=lead)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["tenant_id"] == tenant.id and out["key_id"] == key["id"]
    assert out["principal_id"] == tenant.admin_id
    assert out["automation_ids"] == [created["id"]]
    assert out["webhook_ids"] == [created_hook] and out["id"].startswith("msg_")

    wait_until(lambda: len(receivers[0].snapshot()) == 1, 10)
    got = receivers[0].snapshot()[0]
    assert got.valid_with == [True] and got.type == "contact.created"
    assert got.id == out["id"]
    data = got.payload["data"]
    assert data["tenant_id"] == tenant.id and data["object"] == lead
    assert data["actor"] == f"key:{key['id']}"
    assert data["via"] == {"key_id": key["id"], "principal_id": tenant.admin_id,
                           "app_id": None}
    assert data["automation_ids"] == [created["id"]]
    assert key["key"] not in got.body.decode()

    # the update rule fires for updates only; the raw header value is accepted too
    r = report(http, verifier, type="contact.updated", key=f"Bearer {key['key']}",
               data={"id": 42})
    assert r.status_code == 202 and r.json()["automation_ids"] == [updated["id"]], r.text
    wait_until(lambda: len(receivers[1].snapshot()) == 1, 10)
    assert receivers[1].snapshot()[0].type == "contact.updated"
    # an event no rule wants is accepted and sent nowhere
    r = report(http, verifier, type="order.created", key=key["key"])
    assert r.status_code == 202 and r.json()["id"] is None and r.json()["webhook_ids"] == []
    time.sleep(0.3)  # the worker polls every 0.05 s: anything queued would have gone by now
    assert [len(rc.snapshot()) for rc in receivers] == [1, 1, 0]


def test_rules_filter_by_key_api_user_and_wildcards(
    site: Site, receivers: list[Receiver]
) -> None:
    kp, http, tenant, verifier = site
    mk = tenant.management_key
    hook = webhook(http, tenant, receivers[0])
    group = http.post("/v1/groups", json={"name": "Importers", "scopes": ["contacts:write"]},
                      headers=auth(mk)).json()["id"]
    r = http.post("/v1/service-accounts", json={"name": "Importer", "group_ids": [group]},
                  headers=auth(mk))
    assert r.status_code == 201, r.text
    bot = r.json()["id"]
    mine = create_key(http, mk, name="mine", scopes=["contacts:write"])
    bots = create_key(http, mk, name="bot", scopes=["contacts:write"], owner_id=bot)
    only_key = rule(http, tenant, name="mine", event="contact.created", key_id=mine["id"],
                    webhook_ids=[hook])
    only_bot = rule(http, tenant, name="bot", event="*.created", principal_id=bot,
                    webhook_ids=[hook])
    every = rule(http, tenant, name="contacts", event="contact.*", webhook_ids=[hook])

    def fired(key: str, event: str) -> set[str]:
        r = report(http, verifier, type=event, key=key, data={})
        assert r.status_code == 202, r.text
        assert len(r.json()["webhook_ids"]) == (1 if r.json()["automation_ids"] else 0)
        return set(r.json()["automation_ids"])

    assert fired(mine["key"], "contact.created") == {only_key["id"], every["id"]}
    assert fired(bots["key"], "contact.created") == {only_bot["id"], every["id"]}
    assert fired(bots["key"], "order.created") == {only_bot["id"]}
    assert fired(mine["key"], "contact.deleted") == {every["id"]}
    assert fired(mine["key"], "order.created") == set()
    wait_until(lambda: len(receivers[0].snapshot()) == 4, 10)  # one delivery per event

    # edit and delete
    r = http.patch(f"/v1/automations/{every['id']}", json={"enabled": False},
                   headers=auth(mk))
    assert r.status_code == 200 and r.json()["enabled"] is False, r.text
    assert fired(mine["key"], "contact.deleted") == set()
    r = http.patch(f"/v1/automations/{only_key['id']}", json={"key_id": None},
                   headers=auth(mk))
    assert r.status_code == 200 and r.json()["key_id"] is None, r.text
    assert fired(bots["key"], "contact.created") == {only_key["id"], only_bot["id"]}
    listed = http.get("/v1/automations", params={"limit": 2}, headers=auth(mk)).json()
    assert len(listed["items"]) == 2 and listed["next_cursor"]
    assert http.delete(f"/v1/automations/{only_bot['id']}", headers=auth(mk)).status_code \
        == 204
    assert http.get(f"/v1/automations/{only_bot['id']}", headers=auth(mk)).status_code == 404
    assert fired(bots["key"], "order.created") == set()
    assert kp.automations is not None


def test_bad_events_and_dead_keys_are_refused_clearly(site: Site) -> None:
    _kp, http, tenant, verifier = site
    mk = tenant.management_key
    key = create_key(http, mk, name="gone", scopes=["contacts:write"])
    for bad in ("Contact.Created", "contact", "key.created", "member.updated", "a.b.c"):
        r = report(http, verifier, type=bad, key=key["key"])
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["field"] == "type"
    r = report(http, verifier, type="contact.created", key=key["key"], data=[1])
    assert r.status_code == 422 and r.json()["error"]["field"] == "data"
    r = report(http, verifier, type="contact.created", key="kp_not_a_real_key_at_all")
    assert r.status_code == 404 and r.json()["error"]["field"] == "key", r.text
    assert http.delete(f"/v1/keys/{key['id']}", headers=auth(mk)).status_code == 204
    r = report(http, verifier, type="contact.created", key=key["key"])
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "key_revoked" and r.json()["error"]["field"] == "key"
    # a management key without keys:verify may not report events
    live = create_key(http, mk, name="live", scopes=["contacts:write"])
    r = report(http, mk, type="contact.created", key=live["key"])
    assert r.status_code == 403, r.text
    r = report(http, live["key"], type="contact.created", key=live["key"])
    assert r.status_code == 403, r.text
    # rules: Keyplane's own events are for webhooks, and a rule needs webhooks
    for body, field in (({"name": "x", "event": "key.created", "webhook_ids": ["whk_x"]},
                         "event"),
                        ({"name": "x", "event": "*.*", "webhook_ids": ["whk_x"]}, "event"),
                        ({"name": "x", "event": "contact.created", "webhook_ids": []},
                         "webhook_ids")):
        r = http.post("/v1/automations", json=body, headers=auth(mk))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


def test_another_tenants_rules_and_webhooks_never_fire_and_cannot_be_named(
    site: Site, receivers: list[Receiver]
) -> None:
    kp, http, tenant, verifier = site
    other = make_tenant(kp, name="Other")
    ours = webhook(http, tenant, receivers[0])
    theirs = webhook(http, other, receivers[1])
    mine = rule(http, tenant, name="ours", event="contact.created", webhook_ids=[ours])
    rule(http, other, name="theirs", event="contact.created", webhook_ids=[theirs])
    key = create_key(http, tenant.management_key, name="ours", scopes=["contacts:write"])

    # naming another tenant's webhook, key or member: not found
    for body, field in (({"webhook_ids": [ours]}, "webhook_ids"),
                        ({"webhook_ids": [theirs], "key_id": key["id"]}, "key_id"),
                        ({"webhook_ids": [theirs], "principal_id": tenant.admin_id},
                         "principal_id")):
        r = http.post("/v1/automations", json={"name": "steal", "event": "contact.created",
                                                **body}, headers=auth(other.management_key))
        assert r.status_code == 404, r.text
        assert r.json()["error"]["field"] == field
    for method in ("GET", "PATCH", "DELETE"):
        r = http.request(method, f"/v1/automations/{mine['id']}",
                         json={"enabled": False} if method == "PATCH" else None,
                         headers=auth(other.management_key))
        assert r.status_code == 404, (method, r.text)
    listed = http.get("/v1/automations", headers=auth(other.management_key)).json()
    assert mine["id"] not in str(listed)

    r = report(http, verifier, type="contact.created", key=key["key"])
    assert r.status_code == 202 and r.json()["automation_ids"] == [mine["id"]], r.text
    wait_until(lambda: len(receivers[0].snapshot()) == 1, 10)
    # a tenant's own verifier knows only its own keys
    their_verifier = kp.keys.create(SYSTEM, other.id, {
        "name": "their gateway", "owner_id": other.admin_id, "scopes": ["keys:verify"],
        "require_tls": False}).secret
    r = report(http, their_verifier, type="contact.created", key=key["key"])
    assert r.status_code == 404, r.text
    time.sleep(0.3)
    assert receivers[1].snapshot() == []
    r = http.get(f"/v1/webhooks/{theirs}/deliveries", headers=auth(other.management_key))
    assert r.status_code == 200 and r.json()["items"] == []


def test_unknown_keys_are_guesses_slowed_per_address(database: tuple[str, str | None],
                                                     tmp_path: Path,
                                                     clock: SettableClock) -> None:
    """Naming an unknown key, or another tenant's, is a guess: counted against the caller's
    address in /v1/verify's count, and answered 429 over the limit, whatever key comes next."""
    url, schema = database
    with serving(url, schema, tmp_path, clock, failure_limit=3) as (kp, http):
        tenant, other = make_tenant(kp), make_tenant(kp, name="Other")
        verifier = kp.keys.create(SYSTEM, tenant.id, {
            "name": "gateway", "owner_id": tenant.admin_id, "scopes": ["keys:verify"],
            "require_tls": False}).secret
        ours = create_key(http, tenant.management_key, name="ours", scopes=["contacts:write"])
        theirs = create_key(http, other.management_key, name="theirs",
                            scopes=["contacts:write"])
        r = report(http, verifier, type="contact.created", key=ours["key"])
        assert r.status_code == 202, r.text
        codes = [report(http, verifier, type="contact.created", key=k).status_code
                 for k in ("kp_not_a_real_key_at_all", theirs["key"], "kp_nor_this_one",
                           "kp_nor_that_one")]
        assert codes == [404, 404, 404, 429]  # failure_limit=3
        r = report(http, verifier, type="contact.created", key=ours["key"])
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        # the same count as /v1/verify's guesses: that address is refused there too
        r = http.post("/v1/verify", json={"key": ours["key"]}, headers=auth(verifier))
        assert r.status_code == 200 and r.json()["code"] == "RATE_LIMITED", r.text


def test_a_rule_names_only_an_app_the_tenant_registered_or_connected(
        site: Site, receivers: list[Receiver]) -> None:
    kp, http, tenant, _verifier = site
    hook = webhook(http, tenant, receivers[0])
    body = {"name": "via Zap", "event": "contact.created", "webhook_ids": [hook]}

    def named(app_id: str) -> httpx2.Response:
        return http.post("/v1/automations", json={**body, "app_id": app_id},
                         headers=auth(tenant.management_key))

    missing = named("app_nothere")  # a typo would otherwise be a rule that never fires
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["field"] == "app_id"
    # another tenant's app, approved but not connected here: it does not exist, word for word
    operator = kp.keys.create(SYSTEM, None, {"name": "platform", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    other = make_tenant(kp, name="Partner")
    theirs = approved_app(http, other.management_key, operator, name="Zap")
    r = named(theirs.app_id)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == {**missing.json()["error"], "message": missing.json()[
        "error"]["message"].replace("app_nothere", theirs.app_id)}
    assert http.get("/v1/automations", headers=auth(tenant.management_key)).json()["items"] == []
    # once this tenant's admin has connected it, it may be named
    code, code_verifier = get_code(http, theirs, tenant.admin_email, tenant.admin_password)
    assert exchange(http, theirs, code, code_verifier).status_code == 200
    assert rule(http, tenant, **body, app_id=theirs.app_id)["app_id"] == theirs.app_id
    # and so may an app it registered itself, connected or not
    ours = register(http, tenant.management_key, name="Our own sync")
    assert ours.status_code == 201, ours.text
    made = rule(http, tenant, **body, app_id=ours.json()["id"])
    r = http.patch(f"/v1/automations/{made['id']}", json={"app_id": "app_gone"},
                   headers=auth(tenant.management_key))
    assert r.status_code == 404 and r.json()["error"]["field"] == "app_id", r.text
