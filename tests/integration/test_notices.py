"""Email notices through a real SMTP server, on both databases: a leaked key (a signed
secret-scanning report, or what ``keyplane keys report-leak`` calls) emails its owner and the
tenant's admins, never the secret; the unused-key policy emails the owner before it revokes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.services.leaks import LeakReport
from tests.conftest import Tenant, make_tenant, serving
from tests.integration.test_leaks import REPORTS, Signer, document, found
from tests.smtp_server import Inbox, MailServer
from tests.support import SettableClock


def about(mail_server: MailServer, name: str) -> list[Any]:
    return [m for m in mail_server.inbox.messages if repr(name) in str(m["Subject"])]


@pytest.fixture
def served(database: tuple[str, str | None], tmp_path: Path, clock: SettableClock,
           mail_server: MailServer) -> Iterator[tuple[object, object, Signer, Tenant]]:
    signer = Signer()
    keys_file = tmp_path / "github-keys.json"
    keys_file.write_text(document(signer))
    url, schema = database
    with serving(url, schema, tmp_path, clock, secret_scanning_keys_file=keys_file,
                 smtp_url=mail_server.url) as (kp, http):
        yield kp, http, signer, make_tenant(kp)


def test_a_leaked_key_emails_its_owner_and_the_admins_never_the_secret(
        served: tuple[object, object, Signer, Tenant], mail_server: MailServer) -> None:
    kp, http, signer, tenant = served
    from keyplane.bootstrap import Keyplane
    assert isinstance(kp, Keyplane)
    second = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {
        "email": "second-admin@example.com", "role": "admin", "password": "x" * 20})
    owner = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {
        "email": "dev@example.com", "role": "member", "password": "x" * 20})
    issued = kp.keys.create(SYSTEM, tenant.id, {"name": "crm sync", "owner_id": owner.id,
                                                "require_tls": False})
    where = "https://github.com/octo/app/blob/abc/.env"
    body = json.dumps([found(issued.secret, where)]).encode()
    r = http.post(REPORTS, content=body, headers=signer.headers(body))  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text

    messages = mail_server.inbox.wait(1)
    [msg] = messages
    told = {a.strip() for a in str(msg["To"]).split(",")}
    assert told == {"dev@example.com", tenant.admin_email, second.email}
    text = Inbox.body(msg)
    assert "crm sync" in str(msg["Subject"])
    assert where in text and "revoked" in text and issued.key.id in text
    assert issued.secret not in text and issued.secret not in str(msg)

    # a person pasting a secret found in a chat log (keyplane keys report-leak): the same
    other = kp.keys.create(SYSTEM, tenant.id, {"name": "billing", "owner_id": owner.id,
                                               "require_tls": False})
    kp.leaks.handle(replace(SYSTEM, name="cli:report-leak"), [LeakReport(
        token=other.secret, type="manual", url="https://chat.example/m/1", source="chat")])
    msg = mail_server.inbox.wait(2)[1]
    assert "billing" in str(msg["Subject"]) and "https://chat.example/m/1" in Inbox.body(msg)
    assert other.secret not in str(msg)

    # reported again (already revoked): nobody is emailed twice
    kp.leaks.handle(SYSTEM, [LeakReport(token=other.secret, type="manual")])
    with pytest.raises(AssertionError):
        mail_server.inbox.wait(3, timeout=1)


def test_the_unused_key_policy_warns_the_owner_by_email_before_revoking(
        served: tuple[object, object, Signer, Tenant], mail_server: MailServer,
        clock: SettableClock) -> None:
    kp, _http, _signer, tenant = served
    from keyplane.bootstrap import Keyplane
    assert isinstance(kp, Keyplane)
    kp.tenants.update(SYSTEM, tenant.id, {"policy": {"revoke_unused_after_days": 30}})
    issued = kp.keys.create(SYSTEM, tenant.id, {"name": "old cron", "owner_id": tenant.admin_id,
                                                "require_tls": False})
    clock.advance(days=20)
    run = kp.hygiene.run(force=True)
    assert run is not None and issued.key.id not in run.warned
    assert mail_server.inbox.messages == []

    clock.advance(days=4)  # day 24: warned 7 days ahead
    run = kp.hygiene.run(force=True)
    assert run is not None and issued.key.id in run.warned
    mail_server.inbox.wait(1)
    [msg] = about(mail_server, "old cron")  # (the tenant's first key, "ops", is warned too)
    assert msg["To"] == tenant.admin_email
    assert "old cron" in str(msg["Subject"]) and "will be revoked" in str(msg["Subject"])
    text = Inbox.body(msg)
    assert "never been used" in text and issued.key.id in text
    assert (clock.now().date().isoformat() < text.split("revoked on ")[1][:10])
    assert issued.secret not in str(msg)

    clock.advance(days=7)
    run = kp.hygiene.run(force=True)
    assert run is not None and issued.key.id in run.revoked
    assert kp.verifier.verify(issued.secret).decision.code.value == "REVOKED"
    assert len(about(mail_server, "old cron")) == 1  # warned once
