"""Signed webhooks over real HTTP, delivered to a real receiver on a loopback port that checks
every request with the ``standardwebhooks`` library. Time is driven through Keyplane's clock.
Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.helpers import create_key
from tests.integration.procs import wait_until
from tests.support import SettableClock
from tests.webhook_receiver import Receiver

FAST = {"webhook_allow_private_targets": True, "webhook_poll_seconds": 0.05}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[tuple[Keyplane, httpx2.Client, Tenant]]:
    url, schema = database
    with serving(url, schema, tmp_path, clock, **FAST) as (kp, http):
        yield kp, http, make_tenant(kp)


def subscribe(http: httpx2.Client, tenant: Tenant, receiver: Receiver,
              events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    r = http.post("/v1/webhooks", json={"url": receiver.url, "events": events or ["key.*"],
                                         "description": "CRM sync", **extra},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    hook: dict[str, Any] = r.json()
    receiver.secrets.append(hook["secret"])
    return hook


def deliveries(http: httpx2.Client, tenant: Tenant, hook_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/webhooks/{hook_id}/deliveries", headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_every_key_lifecycle_action_reaches_the_receiver_signed(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    _kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    assert hook["secret"].startswith("whsec_")
    assert hook["events"] == ["key.*"] and hook["enabled"] is True
    shown = http.get(f"/v1/webhooks/{hook['id']}", headers=auth(tenant.management_key)).json()
    assert "secret" not in shown and hook["secret"] not in str(shown)

    mk = tenant.management_key
    key = create_key(http, mk, name="Zapier", scopes=["contacts:read"])
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    got = receiver.snapshot()[0]
    assert got.valid_with == [True]
    assert got.type == "key.created"
    assert got.payload["id"] == got.id  # the webhook-id names the event
    data = got.payload["data"]
    assert data["tenant_id"] == tenant.id
    assert data["actor"].startswith("key:")
    shown_key = http.get(f"/v1/keys/{key['id']}", headers=auth(mk)).json()
    assert data["object"] == shown_key  # the key as the API shows it
    assert key["key"] not in got.body.decode()  # never the secret

    kid = key["id"]
    steps = [
        ("key.locked", lambda: http.patch(f"/v1/keys/{kid}", json={"enabled": False},
                                          headers=auth(mk))),
        ("key.unlocked", lambda: http.patch(f"/v1/keys/{kid}", json={"enabled": True},
                                            headers=auth(mk))),
        ("key.updated", lambda: http.patch(f"/v1/keys/{kid}", json={"name": "Zapier 2"},
                                           headers=auth(mk))),
        ("key.rotated", lambda: http.post(f"/v1/keys/{kid}/rotate", json={},
                                          headers=auth(mk))),
        ("key.created", lambda: http.post(f"/v1/keys/{kid}/duplicate", json={"name": "copy"},
                                          headers=auth(mk))),
        ("key.revoked", lambda: http.delete(f"/v1/keys/{kid}", headers=auth(mk))),
    ]
    secrets_seen = [key["key"]]
    for n, (event_type, act) in enumerate(steps, start=2):
        r = act()
        assert r.status_code < 300, r.text
        if "key" in (r.json() if r.content else {}):
            secrets_seen.append(r.json()["key"])
        wait_until(lambda n=n: len(receiver.snapshot()) == n, 10)
        last = receiver.snapshot()[-1]
        assert last.type == event_type, (event_type, last.payload)
        assert last.valid_with == [True]
    assert receiver.of_type("key.updated")[0].payload["data"]["object"]["name"] == "Zapier 2"
    rotated = receiver.of_type("key.rotated")[0].payload["data"]["object"]
    assert rotated["previous_secret_expires_at"] is not None
    everything = b"".join(r.body for r in receiver.snapshot()).decode()
    assert not any(s in everything or s[3:] in everything for s in secrets_seen)
    assert len(receiver.ids()) == 7  # a distinct webhook-id per event

    # the receiver has the last request before Keyplane has recorded its answer: wait for that
    wait_until(lambda: all(d["status"] == "succeeded"
                           for d in deliveries(http, tenant, hook["id"])), 10)
    listed = deliveries(http, tenant, hook["id"])
    assert len(listed) == 7
    assert all(d["status"] == "succeeded" and d["response_status"] == 200 and d["attempts"] == 1
               and d["latency_ms"] is not None for d in listed)
    assert {d["event_id"] for d in listed} == receiver.ids()


def test_only_subscribed_types_are_sent_and_types_are_checked(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    _kp, http, tenant = site
    subscribe(http, tenant, receiver, events=["key.revoked"])
    r = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["key.exploded"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 422 and r.json()["error"]["field"] == "events"
    assert "key.exploded" in r.json()["error"]["message"]
    for bad in ([], ["keys.*"], ["*.created"]):
        r = http.post("/v1/webhooks", json={"url": receiver.url, "events": bad},
                      headers=auth(tenant.management_key))
        assert r.status_code == 422, bad
    key = create_key(http, tenant.management_key)
    assert http.delete(f"/v1/keys/{key['id']}",
                       headers=auth(tenant.management_key)).status_code == 204
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    assert receiver.snapshot()[0].type == "key.revoked"


def test_a_receiver_that_is_down_gets_the_event_once_it_is_back(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver, clock: SettableClock
) -> None:
    _kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    receiver.stop()  # connection refused
    create_key(http, tenant.management_key)
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["attempts"] >= 1, 10)
    first = deliveries(http, tenant, hook["id"])[0]
    assert first["status"] == "pending"
    assert first["response_status"] is None and first["last_error"]
    assert first["next_attempt_at"] is not None

    clock.advance(minutes=30)  # the backoff has passed, but the receiver is still down
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["attempts"] >= 2, 10)
    receiver.start()
    clock.advance(hours=2)
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    got = receiver.snapshot()[0]
    assert got.valid_with == [True] and got.type == "key.created"
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["status"] == "succeeded", 10)
    done = deliveries(http, tenant, hook["id"])[0]
    assert done["attempts"] == 3 and done["response_status"] == 200
    assert done["event_id"] == got.id
    shown = http.get(f"/v1/webhooks/{hook['id']}", headers=auth(tenant.management_key)).json()
    assert shown["consecutive_failures"] == 0 and shown["failing_since"] is None


def test_a_rotated_secret_signs_beside_the_old_one_until_the_grace_ends(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver, clock: SettableClock
) -> None:
    _kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    r = http.post(f"/v1/webhooks/{hook['id']}/rotate-secret",
                  json={"grace_period_seconds": 3600}, headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != hook["secret"]
    assert r.json()["previous_secret_expires_at"] is not None
    receiver.secrets.append(new)  # [old, new]

    create_key(http, tenant.management_key)
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    during = receiver.snapshot()[0]
    assert during.valid_with == [True, True]  # both verify during the grace
    assert len(during.headers["webhook-signature"].split(" ")) == 2

    clock.advance(hours=2)
    create_key(http, tenant.management_key)
    wait_until(lambda: len(receiver.snapshot()) == 2, 10)
    after = receiver.snapshot()[1]
    assert after.valid_with == [False, True]  # the old secret no longer signs


def test_an_endpoint_failing_for_a_day_is_disabled_with_a_reason_and_an_event(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver, clock: SettableClock
) -> None:
    _kp, http, tenant = site
    broken = Receiver(status=500).start()
    try:
        failing = subscribe(http, tenant, broken)
        subscribe(http, tenant, receiver, events=["webhook.disabled"])
        create_key(http, tenant.management_key)

        def attempts() -> int:
            return int(deliveries(http, tenant, failing["id"])[0]["attempts"])

        wait_until(lambda: attempts() == 1, 10)
        for n in range(2, 40):
            shown = http.get(f"/v1/webhooks/{failing['id']}",
                             headers=auth(tenant.management_key)).json()
            if not shown["enabled"]:
                break
            assert shown["disabled_reason"] is None
            clock.advance(hours=2)
            wait_until(lambda n=n: attempts() == n, 10)
        assert not shown["enabled"]
        assert "failed for 24 hours" in shown["disabled_reason"]
        assert "HTTP 500" in shown["disabled_reason"]
        assert shown["disabled_at"] is not None
        d = deliveries(http, tenant, failing["id"])[0]
        assert d["status"] == "failed" and d["response_status"] == 500
        assert 12 <= d["attempts"] < 40  # retried all day with backoff, then given up
        assert len(broken.snapshot()) == d["attempts"]
        assert len({r.id for r in broken.snapshot()}) == 1  # the same webhook-id each time
        assert all(r.valid_with == [True] for r in broken.snapshot())

        wait_until(lambda: len(receiver.snapshot()) == 1, 10)
        event = receiver.snapshot()[0]
        assert event.type == "webhook.disabled" and event.valid_with == [True]
        assert event.payload["data"]["object"]["id"] == failing["id"]
        assert event.payload["data"]["object"]["disabled_reason"] == shown["disabled_reason"]
        assert event.payload["data"]["actor"] == "system"

        # a disabled endpoint is sent nothing; enabling it again clears the reason
        create_key(http, tenant.management_key)
        assert len(deliveries(http, tenant, failing["id"])) == 1
        r = http.patch(f"/v1/webhooks/{failing['id']}", json={"enabled": True},
                       headers=auth(tenant.management_key))
        assert r.status_code == 200
        assert r.json()["disabled_reason"] is None and r.json()["enabled"] is True
        broken.status = 200
        create_key(http, tenant.management_key)
        wait_until(lambda: deliveries(http, tenant, failing["id"])[0]["status"] == "succeeded",
                   10)
    finally:
        broken.stop()


def test_redeliver_sends_the_same_event_again(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    _kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    create_key(http, tenant.management_key)
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["status"] == "succeeded", 10)
    delivery = deliveries(http, tenant, hook["id"])[0]
    r = http.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver",
                  headers=auth(tenant.management_key))
    assert r.status_code == 202, r.text
    wait_until(lambda: len(receiver.snapshot()) == 2, 10)
    first, again = receiver.snapshot()
    assert again.id == first.id and again.body == first.body and again.valid_with == [True]
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["attempts"] == 2, 10)
    missing = http.post(f"/v1/webhooks/{hook['id']}/deliveries/dlv_nope/redeliver",
                        headers=auth(tenant.management_key))
    assert missing.status_code == 404

    # a disabled endpoint first needs enabling
    http.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False},
               headers=auth(tenant.management_key))
    r = http.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver",
                  headers=auth(tenant.management_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "webhook_disabled"


def test_a_delivery_being_sent_cannot_be_redelivered_twice_at_once(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    _kp, http, tenant = site
    receiver.delay = 1.5  # the first attempt is still under way
    hook = subscribe(http, tenant, receiver)
    create_key(http, tenant.management_key)
    wait_until(lambda: deliveries(http, tenant, hook["id"]) != [], 10)
    delivery = deliveries(http, tenant, hook["id"])[0]
    wait_until(lambda: receiver._inflight.get(delivery["event_id"]), 10)
    r = http.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver",
                  headers=auth(tenant.management_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "delivery_in_progress"
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["status"] == "succeeded", 10)
    assert len(receiver.snapshot()) == 1


def test_another_tenant_can_neither_see_nor_change_a_webhook(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    create_key(http, tenant.management_key)
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    delivery = deliveries(http, tenant, hook["id"])[0]
    other = make_tenant(kp, name="Other")
    theirs = auth(other.management_key)
    base = f"/v1/webhooks/{hook['id']}"
    assert http.get(base, headers=theirs).status_code == 404
    assert http.patch(base, json={"enabled": False}, headers=theirs).status_code == 404
    assert http.post(base + "/rotate-secret", json={}, headers=theirs).status_code == 404
    assert http.get(base + "/deliveries", headers=theirs).status_code == 404
    assert http.post(base + f"/deliveries/{delivery['id']}/redeliver",
                     headers=theirs).status_code == 404
    assert http.delete(base, headers=theirs).status_code == 404
    assert http.get("/v1/webhooks", headers=theirs).json()["items"] == []
    assert http.get("/v1/webhooks", params={"tenant_id": tenant.id},
                    headers=theirs).status_code == 404
    # the other tenant's key changes never reach this tenant's endpoint
    create_key(http, other.management_key)
    mine = http.get(base, headers=auth(tenant.management_key))
    assert mine.status_code == 200 and mine.json()["enabled"] is True
    assert len(deliveries(http, tenant, hook["id"])) == 1

    # reading needs tenant:read; managing needs tenant:write
    reader = create_key(http, tenant.management_key, name="reader", scopes=["tenant:read"],
                        require_tls=False)["key"]
    assert http.get("/v1/webhooks", headers=auth(reader)).status_code == 200
    r = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]},
                  headers=auth(reader))
    assert r.status_code == 403
    assert http.delete(base, headers=auth(reader)).status_code == 403


def test_the_signing_secret_is_encrypted_at_rest(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    with kp.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT secret FROM webhooks")).scalar_one()
    raw = hook["secret"].removeprefix("whsec_")
    assert raw not in stored and hook["secret"] not in stored
    assert stored.startswith("p1:")  # sealed under the pepper p1
    assert kp.webhooks.sealer.unseal(stored, hook["id"]) == hook["secret"]
    with pytest.raises(InvalidTag):  # bound to its webhook: useless on another
        kp.webhooks.sealer.unseal(stored, "whk_other")


def test_operator_manages_a_tenants_webhooks_by_naming_it(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    from keyplane.core.rights import SYSTEM

    kp, http, tenant = site
    operator = kp.keys.create(SYSTEM, None, {"name": "platform", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    r = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]},
                  headers=auth(operator))
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_required"
    r = http.post("/v1/webhooks", params={"tenant_id": tenant.id},
                  json={"url": receiver.url, "events": ["*"]}, headers=auth(operator))
    assert r.status_code == 201
    listed = http.get("/v1/webhooks", headers=auth(tenant.management_key)).json()["items"]
    assert [w["id"] for w in listed] == [r.json()["id"]]


def test_members_service_accounts_and_apps_send_their_events(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    from keyplane.core.rights import SYSTEM

    kp, http, tenant = site
    subscribe(http, tenant, receiver,
              events=["member.*", "service_account.*", "key.revoked", "app.approved"])
    mk = auth(tenant.management_key)
    r = http.post("/v1/service-accounts", json={"name": "API - Zapier"}, headers=mk)
    assert r.status_code == 201, r.text
    robot = r.json()
    create_key(http, tenant.management_key, owner_id=robot["id"])
    r = http.post("/v1/members", json={"email": "new@example.com", "role": "member"},
                  headers=mk)
    assert r.status_code == 201, r.text
    assert http.delete(f"/v1/service-accounts/{robot['id']}", headers=mk).status_code == 204
    operator = kp.keys.create(SYSTEM, None, {"name": "platform", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    app = http.post("/v1/apps", json={"name": "Partner", "homepage": "https://p.example",
                                      "redirect_uris": ["https://p.example/cb"],
                                      "scopes": ["contacts:read"]}, headers=mk)
    assert app.status_code == 201, app.text
    assert http.post(f"/v1/apps/{app.json()['id']}/approve",
                     headers=auth(operator)).status_code == 200

    wait_until(lambda: len(receiver.snapshot()) == 5, 10)
    got = {r.type: r for r in receiver.snapshot()}  # delivery order is not guaranteed
    assert set(got) == {"service_account.created", "member.created", "key.revoked",
                        "service_account.deleted", "app.approved"}
    assert all(r.valid_with == [True] for r in got.values())
    # as the API gives it (less the answer's note: it is in no data-access group)
    assert got["service_account.created"].payload["data"]["object"] == {
        k: v for k, v in robot.items() if k != "note"}
    assert got["member.created"].payload["data"]["object"]["email"] == "new@example.com"
    revoked = got["key.revoked"].payload["data"]["object"]
    assert revoked["owner_id"] == robot["id"]  # the owner's removal revoked its key
    assert got["service_account.deleted"].payload["data"]["object"]["id"] == robot["id"]
    assert got["app.approved"].payload["data"]["object"]["id"] == app.json()["id"]
    assert got["app.approved"].payload["data"]["tenant_id"] == tenant.id
    assert all("argon2" not in r.body.decode() for r in got.values())  # no password hash


def test_finished_deliveries_are_forgotten_after_the_retention(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver, clock: SettableClock
) -> None:
    kp, http, tenant = site
    hook = subscribe(http, tenant, receiver)
    create_key(http, tenant.management_key)
    wait_until(lambda: deliveries(http, tenant, hook["id"])[0]["status"] == "succeeded", 10)
    old = deliveries(http, tenant, hook["id"])[0]
    clock.advance(days=31)  # KEYPLANE_WEBHOOK_RETENTION_DAYS: 30
    create_key(http, tenant.management_key)
    wait_until(lambda: len(receiver.snapshot()) == 2, 10)
    wait_until(lambda: all(d["status"] == "succeeded"
                           for d in deliveries(http, tenant, hook["id"])), 10)
    assert kp.deliveries.prune() == 1
    left = deliveries(http, tenant, hook["id"])
    assert len(left) == 1 and left[0]["id"] != old["id"]
    with kp.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT id FROM webhook_events")).scalars().all()
    assert events == [left[0]["event_id"]]


def test_connecting_and_revoking_an_app_send_connection_events(
    site: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    from keyplane.core.rights import SYSTEM
    from tests.integration.oauth_support import approved_app, exchange, get_code

    kp, http, tenant = site
    subscribe(http, tenant, receiver, events=["connection.*"])
    operator = kp.keys.create(SYSTEM, None, {"name": "platform", "scopes": ["platform:write"],
                                             "require_tls": False}, operator=True).secret
    partner = approved_app(http, tenant.management_key, operator)
    code, verifier = get_code(http, partner, tenant.admin_email, tenant.admin_password)
    assert exchange(http, partner, code, verifier).status_code == 200
    wait_until(lambda: len(receiver.of_type("connection.authorized")) == 1, 10)
    authorized = receiver.of_type("connection.authorized")[0]
    assert authorized.valid_with == [True]
    assert authorized.payload["data"]["tenant_id"] == tenant.id
    assert authorized.payload["data"]["actor"] == f"principal:{tenant.admin_id}"
    connections = http.get("/v1/connections", headers=auth(tenant.management_key)).json()
    connection_id = connections["items"][0]["id"]
    r = http.delete(f"/v1/connections/{connection_id}", headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    wait_until(lambda: len(receiver.of_type("connection.revoked")) == 1, 10)
    revoked = receiver.of_type("connection.revoked")[0]
    assert revoked.payload["data"]["object"]["id"] == connection_id
    assert partner.client_secret not in b"".join(r.body for r in receiver.snapshot()).decode()
