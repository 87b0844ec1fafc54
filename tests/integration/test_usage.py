"""Usage per key, hour and outcome: recorded in memory, flushed in batches that add up across
processes, kept when a flush fails, written at shutdown; GET /v1/keys/{id}/usage."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane, build
from keyplane.core.rights import SYSTEM
from keyplane.core.views import ts
from tests.conftest import Tenant, auth, make_settings, make_tenant
from tests.integration.helpers import create_key, verify
from tests.support import SettableClock


def usage(http: httpx2.Client, key: str, key_id: str, **params: str) -> httpx2.Response:
    return http.get(f"/v1/keys/{key_id}/usage", params=params, headers=auth(key))


def rows(answer: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(i["hour"], i["outcome"], i["count"]) for i in answer["items"]]


def test_usage_is_counted_per_hour_and_outcome(
        http: httpx2.Client, keyplane: Keyplane, clock: SettableClock, tenant: Tenant,
        verifier_key: str) -> None:
    clock.set(clock.now().replace(minute=10, second=0))
    first_hour = clock.now().replace(minute=0)
    key = create_key(http, tenant.management_key, scopes=["contacts:read"])
    for _ in range(3):
        assert verify(http, verifier_key, key["key"])["code"] == "VALID"
    assert verify(http, verifier_key, key["key"], scopes=["contacts:write"])["code"] == \
        "INSUFFICIENT_SCOPE"
    clock.advance(hours=1)
    for _ in range(2):
        assert verify(http, verifier_key, key["key"])["code"] == "VALID"
    last = clock.now()
    keyplane.usage.flush()

    r = usage(http, tenant.management_key, key["id"])
    assert r.status_code == 200, r.text
    h0, h1 = str(ts(first_hour)), str(ts(first_hour + timedelta(hours=1)))
    assert rows(r.json()) == [(h0, "INSUFFICIENT_SCOPE", 1), (h0, "VALID", 3), (h1, "VALID", 2)]
    assert r.json()["last_used_at"] == ts(last)

    only_second = usage(http, tenant.management_key, key["id"], **{"from": h1})
    assert rows(only_second.json()) == [(h1, "VALID", 2)]
    only_first = usage(http, tenant.management_key, key["id"], to=h1)
    assert [n for _, _, n in rows(only_first.json())] == [1, 3]


def test_usage_needs_a_key_of_the_callers_tenant(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    other = make_tenant(keyplane, "Globex")
    theirs = create_key(http, other.management_key)
    assert usage(http, tenant.management_key, theirs["id"]).status_code == 404
    assert usage(http, other.management_key, theirs["id"]).status_code == 200
    assert http.get(f"/v1/keys/{theirs['id']}/usage").status_code == 401


@pytest.mark.parametrize(("params", "field"), [
    ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ({"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ({"from": "yesterday"}, "from"),
    ({"to": "soon"}, "to"),
])
def test_bad_ranges_name_the_field(http: httpx2.Client, tenant: Tenant, params: dict[str, str],
                                   field: str) -> None:
    key = create_key(http, tenant.management_key)
    r = usage(http, tenant.management_key, key["id"], **params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def counts(kp: Keyplane, tenant: Tenant, key_id: str) -> dict[str, int]:
    series = kp.usage_reports.series(SYSTEM, tenant.id, key_id, start=None, end=None)
    out: dict[str, int] = {}
    for item in series["items"]:
        out[item["outcome"]] = out.get(item["outcome"], 0) + item["count"]
    return out


def test_flushes_from_several_processes_add_up(
        keyplane: Keyplane, database: tuple[str, str | None], tmp_path: Path,
        clock: SettableClock, tenant: Tenant) -> None:
    url, schema = database
    others = [build(make_settings(tmp_path, url), clock=clock, schema=schema) for _ in range(2)]
    try:
        key = keyplane.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
        recorders = [keyplane.usage] + [kp.usage for kp in others]
        start = threading.Barrier(len(recorders))

        def work(i: int) -> None:
            recorder = recorders[i]
            for _round in range(5):
                for _ in range(10 + i):
                    recorder.record(key.key.id, clock.timestamp(), "VALID")
                recorder.record(key.key.id, clock.timestamp(), "REVOKED")
                start.wait(10)  # every process flushes the same rows at the same moment
                recorder.flush()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(recorders))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert counts(keyplane, tenant, key.key.id) == {"VALID": 5 * (10 + 11 + 12),
                                                        "REVOKED": 15}
    finally:
        for kp in others:
            kp.close()


def test_a_failed_flush_keeps_the_counts_for_the_next_one(
        keyplane: Keyplane, clock: SettableClock, tenant: Tenant) -> None:
    key = keyplane.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
    keyplane.usage.stop()  # no timer: this test flushes by hand
    for _ in range(4):
        keyplane.usage.record(key.key.id, clock.timestamp(), "VALID")
    with keyplane.engine.begin() as conn:  # the table goes away for a moment
        conn.execute(sa.text("ALTER TABLE key_usage RENAME TO key_usage_away"))
    try:
        assert keyplane.usage.flush() == 0
        assert keyplane.usage.pending() == 4
    finally:
        with keyplane.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE key_usage_away RENAME TO key_usage"))
    keyplane.usage.record(key.key.id, clock.timestamp(), "VALID")
    assert keyplane.usage.flush() == 5
    assert counts(keyplane, tenant, key.key.id) == {"VALID": 5}


def test_stopping_writes_what_was_counted(keyplane: Keyplane, clock: SettableClock,
                                          tenant: Tenant) -> None:
    key = keyplane.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
    keyplane.usage.stop()  # no timer from here on: only the final stop writes
    for _ in range(6):
        assert keyplane.verifier.verify(key.secret, tls=True).valid
    assert keyplane.usage.pending() == 6
    keyplane.stop()
    assert keyplane.usage.pending() == 0
    assert counts(keyplane, tenant, key.key.id) == {"VALID": 6}
    stored = keyplane.keys.get(SYSTEM, tenant.id, key.key.id)
    assert stored.last_used_at == clock.now()


def test_the_operator_reads_its_own_keys_usage(http: httpx2.Client, keyplane: Keyplane,
                                               operator_key: str, verifier_key: str) -> None:
    listed = keyplane.keys.list(SYSTEM, None, operator=True).items
    verifier_id = next(k.id for k in listed if k.name == "gateway")
    for _ in range(2):
        assert http.get("/v1/changes", headers=auth(verifier_key)).status_code == 200
    keyplane.usage.flush()
    r = http.get(f"/v1/operator/keys/{verifier_id}/usage", headers=auth(operator_key))
    assert r.status_code == 200, r.text
    assert [(i["outcome"], i["count"]) for i in r.json()["items"]] == [("VALID", 2)]
    assert r.json()["last_used_at"] is not None


def report(http: httpx2.Client, verifier: str, uses: list[dict[str, Any]]) -> httpx2.Response:
    return http.post("/v1/usage", json={"uses": uses}, headers=auth(verifier))


def test_a_verifier_reports_the_uses_its_cache_answered(
        http: httpx2.Client, keyplane: Keyplane, clock: SettableClock, tenant: Tenant,
        verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, scopes=["contacts:read"])
    r = report(http, verifier_key, [{"key_id": key["id"], "count": 40},
                                    {"key_id": key["id"], "count": 2}])
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "ignored": 0}
    keyplane.usage.flush()
    answer = usage(http, tenant.management_key, key["id"]).json()
    assert [(o, n) for _, o, n in rows(answer)] == [("VALID", 42)]
    assert answer["last_used_at"] == ts(clock.now())


def test_a_tenant_verifier_reports_only_its_own_tenants_live_keys(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    other = make_tenant(keyplane, "Other")
    mine = create_key(http, tenant.management_key)
    theirs = create_key(http, other.management_key)
    revoked = create_key(http, tenant.management_key)
    assert http.delete(f"/v1/keys/{revoked['id']}",
                       headers=auth(tenant.management_key)).status_code == 204
    verifier = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "tenant gateway", "owner_id": tenant.admin_id, "scopes": ["keys:verify"],
        "require_tls": False}).secret
    r = report(http, verifier, [{"key_id": k, "count": 5} for k in (
        mine["id"], theirs["id"], revoked["id"], "key_doesnotexist", "con_doesnotexist")])
    assert r.status_code == 200 and r.json() == {"accepted": 1, "ignored": 4}
    keyplane.usage.flush()
    assert counts(keyplane, tenant, mine["id"]) == {"VALID": 5}
    assert counts(keyplane, other, theirs["id"]) == {}


@pytest.mark.parametrize("uses", [
    [{"key_id": "KEY", "count": 0}],
    [{"key_id": "KEY", "count": -3}],
    [{"key_id": "KEY", "count": 10**10}],
    [{"key_id": "KEY", "count": 1}, {"key_id": "key x", "count": 1}],
    [{"key_id": "KEY"}],
    [{"key_id": "KEY", "count": 1, "outcome": "VALID"}],
    [{"key_id": "KEY", "count": 1}] + [{"key_id": f"key_{i}", "count": 1} for i in range(1000)],
    [{"key_id": "KEY", "count": 600_000_000}, {"key_id": "KEY", "count": 600_000_000}],
])
def test_bad_usage_reports_name_the_field_and_count_nothing(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str,
        uses: list[dict[str, Any]]) -> None:
    key = create_key(http, tenant.management_key)
    for use in uses:
        use["key_id"] = key["id"] if use["key_id"] == "KEY" else use["key_id"]
    r = report(http, verifier_key, uses)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith("uses")
    keyplane.usage.flush()
    assert counts(keyplane, tenant, key["id"]) == {}


def test_only_a_verifier_reports_usage(http: httpx2.Client, keyplane: Keyplane,
                                       tenant: Tenant) -> None:
    key = create_key(http, tenant.management_key)
    r = report(http, tenant.management_key, [{"key_id": key["id"], "count": 1}])
    assert r.status_code == 403
    r = http.post("/v1/usage", json={"uses": [{"key_id": key["id"], "count": 1}]})
    assert r.status_code == 401
    keyplane.usage.flush()
    assert counts(keyplane, tenant, key["id"]) == {}
