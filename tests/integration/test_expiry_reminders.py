"""Expiry reminders as a customer sees them: a key expiring in 7 days produces one signed
``key.expiring`` webhook (to a real receiver) and one email (to a real SMTP server), and no
second one when the scheduler runs again on another Keyplane instance on the same database,
or on two at once. Time moves through Keyplane's clock. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.core.rights import SYSTEM
from keyplane.services.expiry import Reminder
from tests.conftest import Tenant, auth, make_settings, make_tenant, serving
from tests.integration.helpers import create_key, when
from tests.integration.procs import wait_until
from tests.integration.test_cli import Cli, cli  # noqa: F401  (the ``cli`` fixture)
from tests.smtp_server import Inbox, MailServer
from tests.support import SettableClock
from tests.webhook_receiver import Receiver

SETTINGS: dict[str, Any] = {"webhook_allow_private_targets": True,
                            "webhook_poll_seconds": 0.05, "expiry_interval_seconds": 0,
                            "public_url": "https://keys.example.com"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


Site = tuple[Keyplane, httpx2.Client, Tenant, str, str | None]


@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path, clock: SettableClock,
         mail_server: MailServer) -> Iterator[Site]:
    url, schema = database
    with serving(url, schema, tmp_path, clock, smtp_url=mail_server.url,
                 **SETTINGS) as (kp, http):
        yield kp, http, make_tenant(kp), url, schema


def another_instance(site: Site, tmp_path: Path, clock: SettableClock,
                     mail_server: MailServer) -> Keyplane:
    """A second Keyplane (another worker or host) on the same database."""
    _kp, _http, _tenant, url, schema = site
    return build(make_settings(tmp_path / "two", url, smtp_url=mail_server.url, **SETTINGS),
                 clock=clock, schema=schema)


def subscribe(http: httpx2.Client, tenant: Tenant, receiver: Receiver) -> str:
    r = http.post("/v1/webhooks", json={"url": receiver.url,
                                         "events": ["key.expiring", "key.expired"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    receiver.secrets.append(r.json()["secret"])
    return str(r.json()["id"])


def deliveries(http: httpx2.Client, tenant: Tenant, hook_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/webhooks/{hook_id}/deliveries", headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_a_key_expiring_in_7_days_is_reminded_once_by_webhook_and_email(
    site: Site, receiver: Receiver, mail_server: MailServer, clock: SettableClock,
    tmp_path: Path
) -> None:
    kp, http, tenant, _url, _schema = site
    hook = subscribe(http, tenant, receiver)
    mk = tenant.management_key
    key = create_key(http, mk, name="Zapier sync", scopes=["contacts:read"],
                     expires_in_days=7, description="Leads from the web form into the CRM")
    create_key(http, mk, name="later", scopes=["contacts:read"], expires_in_days=60)

    sent = kp.expiry.run()
    assert sent is not None
    assert [(r.key_id, r.threshold_days) for r in sent] == [(key["id"], 7)]
    wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    got = receiver.snapshot()[0]
    assert got.valid_with == [True] and got.type == "key.expiring"
    data = got.payload["data"]
    assert data["tenant_id"] == tenant.id and data["actor"] == "system:expiry"
    obj = data["object"]
    assert obj["id"] == key["id"] and obj["name"] == "Zapier sync"
    assert obj["threshold_days"] == 7 and obj["days_left"] == 7
    assert obj["rotate_url"] == f"https://keys.example.com/keys/{key['id']}"
    assert when(obj["expires_at"]) == clock.now() + timedelta(days=7)

    [mail] = mail_server.inbox.wait(1)
    assert tenant.admin_email in str(mail["To"])  # the owner, who is also the admin
    assert mail["Subject"] == 'API key "Zapier sync" expires in 7 days'
    text = Inbox.body(mail)
    assert "Leads from the web form into the CRM" in text  # which integration stops
    assert obj["expires_at"] in text  # when
    assert f"https://keys.example.com/keys/{key['id']}" in text  # how to rotate
    assert f"keyplane keys rotate {key['id']} --tenant {tenant.id}" in text
    assert key["key"] not in text and key["key"][3:] not in text  # never the secret

    # the scheduler again, here and on another instance: the lease, then the durable claim
    assert kp.expiry.run() is None
    two = another_instance(site, tmp_path, clock, mail_server)
    try:
        assert two.expiry.run() is None  # another instance holds the lease
        assert two.expiry.run(force=True) == []
        clock.advance(minutes=20)  # the lease ran out: instance two scans, finds it sent
        assert two.expiry.run() == []
        assert kp.expiry.run(force=True) == []
    finally:
        two.close()
    assert len(deliveries(http, tenant, hook)) == 1
    assert len(mail_server.inbox.messages) == 1

    # the 1-day reminder, once; then a rotation renews the key: reminded again for the new
    # expiry; then it expires
    clock.advance(days=6, hours=1)
    sent = kp.expiry.run(force=True)
    assert sent is not None and [(r.key_id, r.threshold_days) for r in sent] == [
        (key["id"], 1)]
    assert kp.expiry.run(force=True) == []
    wait_until(lambda: len(receiver.snapshot()) == 2, 10)
    assert receiver.snapshot()[1].payload["data"]["object"]["threshold_days"] == 1
    assert mail_server.inbox.wait(2)[1]["Subject"] == \
        'API key "Zapier sync" expires tomorrow'

    r = http.post(f"/v1/keys/{key['id']}/rotate", json={"grace_period_seconds": 0},
                  headers=auth(mk))
    assert r.status_code == 200, r.text
    assert when(r.json()["expires_at"]) == clock.now() + timedelta(days=7)
    sent = kp.expiry.run(force=True)
    assert sent is not None and [(r.key_id, r.threshold_days) for r in sent] == [
        (key["id"], 7)]
    clock.advance(days=7, seconds=1)
    sent = kp.expiry.run(force=True)
    assert sent is not None and [(r.key_id, r.threshold_days) for r in sent] == [
        (key["id"], 0)]
    wait_until(lambda: len(receiver.snapshot()) == 4, 10)
    assert [r.type for r in receiver.snapshot()] == [
        "key.expiring", "key.expiring", "key.expiring", "key.expired"]
    assert len(mail_server.inbox.messages) == 3  # key.expired is not emailed
    assert len(receiver.ids()) == 4
    assert all(r.valid_with == [True] for r in receiver.snapshot())


def test_two_schedulers_at_once_send_each_reminder_once(
    site: Site, mail_server: MailServer, clock: SettableClock, tmp_path: Path
) -> None:
    kp, http, tenant, _url, _schema = site
    ids = {create_key(http, tenant.management_key, name=f"k{i}", scopes=["contacts:read"],
                      expires_in_days=days)["id"]
           for i, days in enumerate((1, 7, 7, 14, 14, 30))}
    two = another_instance(site, tmp_path, clock, mail_server)
    results: list[list[Reminder]] = []
    try:
        start = threading.Barrier(2)

        def run(instance: Keyplane) -> None:
            start.wait()
            results.append(instance.expiry.run(force=True) or [])

        threads = [threading.Thread(target=run, args=(k,)) for k in (kp, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        two.close()
    sent = [r.key_id for batch in results for r in batch]
    assert len(sent) == len(set(sent)) == 5  # not the 30-day key; none twice
    assert set(sent) < ids
    assert len(mail_server.inbox.wait(5)) == 5


def test_keys_of_a_disabled_tenant_or_revoked_are_not_reminded(
    site: Site, mail_server: MailServer
) -> None:
    kp, http, tenant, _url, _schema = site
    key = create_key(http, tenant.management_key, name="gone", scopes=["contacts:read"],
                     expires_in_days=7)
    assert http.delete(f"/v1/keys/{key['id']}",
                       headers=auth(tenant.management_key)).status_code == 204
    other = make_tenant(kp, name="Paused")
    create_key(http, other.management_key, name="paused", scopes=["contacts:read"],
               expires_in_days=7)
    kp.tenants.update(SYSTEM, other.id, {"enabled": False})
    assert kp.expiry.run(force=True) == []
    assert mail_server.inbox.messages == []


def test_keyplane_reminders_run_for_cron(
    keyplane: Keyplane, tenant: Tenant, cli: Cli  # noqa: F811
) -> None:
    # the CLI runs on the real clock, as the test's clock starts
    key = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "cron", "owner_id": tenant.admin_id, "scopes": ["contacts:read"],
        "expires_in_days": 7})
    out = cli.json("reminders", "run")
    assert out["ran"] is True
    assert [(s["key_id"], s["threshold_days"]) for s in out["sent"]] == [(key.key.id, 7)]
    assert cli.json("reminders", "run") == {"ran": False, "sent": []}  # the lease
    assert cli.json("reminders", "run", "--force") == {"ran": True, "sent": []}  # sent once
    assert "Another instance scanned" in cli.ok("reminders", "run")
