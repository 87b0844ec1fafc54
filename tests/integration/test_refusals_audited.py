"""Refused management calls (403, and 404 on an id the caller may not see) are audited as
``authz_fail`` events in the caller's tenant, aggregated per credential, route, status and
minute, on SQLite and PostgreSQL; a call that succeeds, or one without a valid credential,
writes none."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM, Caller, CredentialKind
from keyplane.services import refusals as refusals_module
from keyplane.services.refusals import MAX_LISTED
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.procs import wait_until
from tests.support import SettableClock


def refusals(http: httpx2.Client, keyplane: Keyplane, key: str) -> list[dict[str, Any]]:
    """The tenant's ``authz_fail`` events, once what was counted has been written."""
    keyplane.audit.refusals.flush()
    r = http.get("/v1/audit-events", params={"action": "authz_fail"}, headers=auth(key))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def reader_key(keyplane: Keyplane, tenant: Tenant) -> tuple[str, str]:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "reader", "owner_id": tenant.admin_id, "scopes": ["keys:read"],
        "require_tls": False})
    return issued.key.id, issued.secret


def test_a_refused_edit_is_one_authz_fail_event(http: httpx2.Client, keyplane: Keyplane,
                                                tenant: Tenant) -> None:
    reader_id, reader = reader_key(keyplane, tenant)
    r = http.patch(f"/v1/keys/{reader_id}", json={"description": "mine now"},
                   headers=auth(reader))
    assert r.status_code == 403
    [event] = refusals(http, keyplane, tenant.management_key)
    assert event["tenant_id"] == tenant.id
    assert event["actor"] == f"key:{reader_id}"
    assert event["action"] == "authz_fail" and event["outcome"] == "refused"
    assert event["target"] == reader_id
    assert event["ip"] == "127.0.0.1"
    assert event["request_id"] == r.headers["x-request-id"]
    details = event["details"]
    assert details["route"] == "PATCH /v1/keys/{key_id}"
    assert details["status"] == 403 and details["code"] == "insufficient_scope"
    assert details["count"] == 1


def test_rapid_refusals_make_one_event_with_their_count(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    reader_id, reader = reader_key(keyplane, tenant)
    for _ in range(50):
        r = http.post(f"/v1/keys/{reader_id}/rotate", headers=auth(reader))
        assert r.status_code == 403
    [event] = refusals(http, keyplane, tenant.management_key)
    assert event["details"]["count"] == 50
    assert event["details"]["route"] == "POST /v1/keys/{key_id}/rotate"


def test_each_minute_of_refusals_is_its_own_event_and_flushes_only_when_over(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, clock: SettableClock) -> None:
    """The background flusher writes a minute once it is over: one row per minute, however
    many refusals; and many probed ids are named only up to a bound."""
    reader_id, reader = reader_key(keyplane, tenant)
    for i in range(30):
        assert http.delete(f"/v1/keys/key_probe{i}", headers=auth(reader)).status_code == 403

    def written() -> list[dict[str, Any]]:
        r = http.get("/v1/audit-events", params={"action": "authz_fail"},
                     headers=auth(tenant.management_key))
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    time.sleep(0.5)  # the flusher (every 0.2 s here) leaves a minute in progress alone
    assert written() == []
    clock.advance(seconds=61)
    wait_until(lambda: len(written()) == 1, 5)  # the minute is over: the flusher writes it
    assert written()[0]["details"]["count"] == 30
    assert len(written()[0]["details"]["targets"]) == MAX_LISTED
    assert http.delete(f"/v1/keys/{reader_id}", headers=auth(reader)).status_code == 403
    events = refusals(http, keyplane, tenant.management_key)
    assert [e["details"]["count"] for e in events] == [1, 30]  # newest first


def test_another_tenants_key_id_is_a_404_and_an_event_in_the_callers_tenant(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    victim = make_tenant(keyplane, "Globex")
    theirs = keyplane.keys.create(SYSTEM, victim.id, {
        "name": "theirs", "owner_id": victim.admin_id, "scopes": ["contacts:read"]}).key.id
    r = http.get(f"/v1/keys/{theirs}", headers=auth(tenant.management_key))
    assert r.status_code == 404
    [event] = refusals(http, keyplane, tenant.management_key)
    assert event["tenant_id"] == tenant.id and event["target"] == theirs
    assert event["details"]["status"] == 404 and event["details"]["count"] == 1
    assert event["details"]["route"] == "GET /v1/keys/{key_id}"
    # nothing tells the caller the id exists elsewhere: an unknown id reads the same
    r = http.get("/v1/keys/key_0000000000000000000000", headers=auth(tenant.management_key))
    assert r.status_code == 404
    events = refusals(http, keyplane, tenant.management_key)
    assert len(events) == 2
    assert events[0]["details"].keys() == event["details"].keys()
    # the probed tenant's log is untouched
    assert refusals(http, keyplane, victim.management_key) == []


def test_successes_and_unauthenticated_calls_write_no_event(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    reader_id, reader = reader_key(keyplane, tenant)
    assert http.get(f"/v1/keys/{reader_id}", headers=auth(reader)).status_code == 200
    assert http.get("/v1/keys", headers=auth(reader)).status_code == 200
    assert http.patch(f"/v1/keys/{reader_id}", json={"description": "ok"},
                      headers=auth(tenant.management_key)).status_code == 200
    assert http.get(f"/v1/keys/{reader_id}").status_code == 401
    assert http.get("/v1/keys/key_x", headers=auth("kp_nope")).status_code == 401
    assert refusals(http, keyplane, tenant.management_key) == []


def test_a_secret_pasted_as_an_id_is_not_written_to_the_audit_log(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    r = http.get(f"/v1/keys/{tenant.management_key}", headers=auth(tenant.management_key))
    assert r.status_code == 404
    [event] = refusals(http, keyplane, tenant.management_key)
    assert tenant.management_key not in str(event)
    assert event["target"].endswith("[redacted]")


def test_no_prober_can_fill_the_audit_log(keyplane: Keyplane, tenant: Tenant,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``MAX_GROUPS`` groups in a minute, a tenant's further refusals share one event;
    past twice that they are only counted in the log: the rows written stay bounded."""
    monkeypatch.setattr(refusals_module, "MAX_GROUPS", 3)
    caller = Caller(kind=CredentialKind.TENANT_KEY, scopes=frozenset(), tenant_id=tenant.id,
                    key_id="key_prober", ip="203.0.113.9")
    for i in range(100):
        keyplane.audit.refused(caller, f"GET /v1/route{i}", 403, "insufficient_scope")
    assert keyplane.audit.refusals.flush() == 4
    with keyplane.ctx.uow(readonly=True) as uow:
        events = uow.audit.page(tenant.id, action="authz_fail", limit=50, cursor=None).items
    assert len(events) == 4
    assert sum(e.details["count"] for e in events) == 100
    assert {e.details["route"] for e in events} == {"GET /v1/route0", "GET /v1/route1",
                                                    "GET /v1/route2", "*"}
    for i in range(100):  # another tenant's prober, while the groups are full
        other = Caller(kind=CredentialKind.TENANT_KEY, scopes=frozenset(),
                       tenant_id=f"loc_{i}", key_id=f"key_{i}")
        keyplane.audit.refused(other, "GET /v1/keys/{key_id}", 404, "not_found")
    assert len(keyplane.audit.refusals._groups) <= 2 * 3
    assert keyplane.audit.refusals.dropped > 0
