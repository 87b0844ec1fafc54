"""Key hygiene over real HTTP, the real CLI and both databases: the report of keys that need
attention (GET /v1/reports/keys, keyplane keys report) as the clock moves, and the unused-key
policy (revoke_unused_after_days) that warns, then revokes, once across instances."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.core.rights import SYSTEM
from keyplane.services.hygiene import PolicyRun
from tests.conftest import Tenant, auth, make_settings, make_tenant, serving
from tests.integration.console_support import signed_in
from tests.integration.helpers import code, create_key, when
from tests.integration.procs import wait_until
from tests.integration.test_cli import Cli, cli  # noqa: F401  (the ``cli`` fixture)
from tests.support import SettableClock
from tests.webhook_receiver import Receiver


def report(http: httpx2.Client, key: str, **params: Any) -> dict[str, list[str]]:
    """Every entry of the report, all pages: key name -> reasons."""
    out: dict[str, list[str]] = {}
    params.setdefault("limit", 2)  # several pages even for a few keys
    while True:
        r = http.get("/v1/reports/keys", params=params, headers=auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        for item in body["items"]:
            assert item["key"]["name"] not in out
            out[item["key"]["name"]] = item["reasons"]
        if body["next_cursor"] is None:
            return out
        params["cursor"] = body["next_cursor"]


def operator(kp: Keyplane) -> str:
    return kp.keys.create(SYSTEM, None, {"name": "platform", "require_tls": False,
                                         "scopes": ["platform:write", "keys:verify"]},
                          operator=True).secret


def test_each_reason_appears_exactly_when_it_should(
    keyplane: Keyplane, http: httpx2.Client, tenant: Tenant, clock: SettableClock
) -> None:
    op = operator(keyplane)
    mk = tenant.management_key
    r = http.patch(f"/v1/tenants/{tenant.id}", json={"policy": {"allow_non_expiring": True}},
                   headers=auth(mk))
    assert r.status_code == 200, r.text
    r = http.post("/v1/groups", json={"name": "Readers", "scopes": ["contacts:read"]},
                  headers=auth(mk))
    r = http.post("/v1/service-accounts", json={"name": "CI", "group_ids": [r.json()["id"]]},
                  headers=auth(mk))
    assert r.status_code == 201, r.text
    bot = r.json()["id"]
    reader = create_key(http, mk, name="reader", scopes=["contacts:read"], expires_in_days=30)
    create_key(http, mk, name="writer", scopes=["contacts:write"], expires_in_days=365)
    create_key(http, mk, name="forever", scopes=["contacts:read"], expires_in_days=None)
    create_key(http, mk, name="bot", scopes=["contacts:read"], owner_id=bot,
               expires_in_days=365)
    ours = {"reader", "writer", "forever", "bot"}

    def now(**params: Any) -> dict[str, list[str]]:
        got = report(http, op, tenant_id=tenant.id, **params)
        return {k: v for k, v in got.items() if k in ours}

    assert now() == {"forever": ["no_expiry"]}
    assert code(http, op, reader["key"]) == "VALID"
    keyplane.usage.flush()

    clock.advance(days=8)
    assert now() == {"writer": ["never_used"], "forever": ["never_used", "no_expiry"],
                     "bot": ["never_used"]}
    r = http.patch(f"/v1/service-accounts/{bot}", json={"enabled": False}, headers=auth(mk))
    assert r.status_code == 200, r.text
    assert now()["bot"] == ["never_used", "owner_disabled"]
    assert now(reason="owner_disabled") == {"bot": ["never_used", "owner_disabled"]}

    clock.advance(days=8)  # day 16: the reader expires on day 30
    assert now()["reader"] == ["expiring"]
    assert "reader" not in now(expiring_days=13)
    assert now(unused_days=16)["reader"] == ["unused", "expiring"]
    assert now(unused_days=16)["writer"] == ["never_used", "unused", "write_scopes_unused"]

    clock.advance(days=15)  # day 31
    assert now()["reader"] == ["expired"]
    clock.advance(days=60)  # day 91
    assert now()["writer"] == ["never_used", "unused", "write_scopes_unused"]
    assert now()["reader"] == ["unused", "expired"]
    assert "writer" not in now(reason="expiring")

    r = http.delete(f"/v1/keys/{reader['id']}", headers=auth(op),
                    params={"tenant_id": tenant.id})
    assert r.status_code == 204, r.text
    assert "reader" not in now()  # revoked keys need no attention


def test_bad_thresholds_and_reasons_are_refused_with_the_field(
    http: httpx2.Client, tenant: Tenant
) -> None:
    mk = tenant.management_key
    for params, field in (({"unused_days": 0}, "unused_days"),
                          ({"expiring_days": 3651}, "expiring_days"),
                          ({"reason": "stale"}, "reason")):
        r = http.get("/v1/reports/keys", params=params, headers=auth(mk))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


def test_another_tenant_sees_nothing_of_yours(
    keyplane: Keyplane, http: httpx2.Client, tenant: Tenant, clock: SettableClock
) -> None:
    other = make_tenant(keyplane, name="Other")
    mine = create_key(http, tenant.management_key, name="mine", scopes=["contacts:read"])
    create_key(http, other.management_key, name="theirs", scopes=["contacts:read"])
    clock.advance(days=8)
    assert "mine" in report(http, tenant.management_key)
    theirs = report(http, other.management_key)
    assert "theirs" in theirs and "mine" not in theirs
    r = http.get("/v1/reports/keys", params={"tenant_id": tenant.id},
                 headers=auth(other.management_key))
    assert r.status_code == 404 and mine["id"] not in r.text
    reader = create_key(http, tenant.management_key, name="no-keys-read",
                        scopes=["contacts:read"])
    r = http.get("/v1/reports/keys", headers=auth(reader["key"]))
    assert r.status_code == 403, r.text


def test_the_api_and_the_cli_agree(
    keyplane: Keyplane, http: httpx2.Client, clock: SettableClock, cli: Cli  # noqa: F811
) -> None:
    # the CLI runs on the real clock: the keys are made 100 days ago
    real = clock.now()
    clock.set(real - timedelta(days=100))
    tenant = make_tenant(keyplane)
    mk = tenant.management_key
    used = create_key(http, mk, name="used", scopes=["contacts:write"], expires_in_days=200)
    create_key(http, mk, name="idle", scopes=["contacts:write"], expires_in_days=110)
    create_key(http, mk, name="fresh", scopes=["contacts:read"], expires_in_days=365)
    clock.set(real - timedelta(days=40))
    assert code(http, operator(keyplane), used["key"]) == "VALID"
    keyplane.usage.flush()
    clock.set(real)
    op = operator(keyplane)
    for params, flags in (({}, []),
                          ({"unused_days": 30, "expiring_days": 120},
                           ["--unused-days", "30", "--expiring-days", "120"]),
                          ({"reason": "write_scopes_unused", "unused_days": 30},
                           ["--reason", "write_scopes_unused", "--unused-days", "30"])):
        api = report(http, op, tenant_id=tenant.id, **params)
        got = cli.json("keys", "report", "--tenant", tenant.id, *flags)
        assert {i["key"]["name"]: i["reasons"] for i in got["items"]} == api, params
        assert api  # something to agree on
    assert report(http, op, tenant_id=tenant.id)["idle"] == [
        "never_used", "unused", "expiring", "write_scopes_unused"]
    table = cli.ok("keys", "report", "--tenant", tenant.id)
    assert "idle" in table and "never_used" in table
    assert "no such tenant" in cli.refused("keys", "report", "--tenant", "loc_nope")
    assert "reason must be one of" in cli.refused("keys", "report", "--tenant", tenant.id,
                                                  "--reason", "stale")


# -- the unused-key policy ----------------------------------------------------------------------

@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[tuple[Keyplane, httpx2.Client, Tenant]]:
    url, schema = database
    with serving(url, schema, tmp_path, clock, webhook_allow_private_targets=True,
                 webhook_poll_seconds=0.05, hygiene_interval_seconds=0) as (kp, http):
        yield kp, http, make_tenant(kp)


def audit(http: httpx2.Client, op: str, tenant: Tenant, action: str) -> list[dict[str, Any]]:
    r = http.get("/v1/audit-events", params={"tenant_id": tenant.id, "action": action,
                                             "limit": 200}, headers=auth(op))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_the_policy_is_bounded(site: tuple[Keyplane, httpx2.Client, Tenant]) -> None:
    _kp, http, tenant = site
    for bad in (6, 3651, "30"):
        r = http.patch(f"/v1/tenants/{tenant.id}",
                       json={"policy": {"revoke_unused_after_days": bad}},
                       headers=auth(tenant.management_key))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "policy.revoke_unused_after_days"
    r = http.patch(f"/v1/tenants/{tenant.id}", json={"policy": {"revoke_unused_after_days": 7}},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200 and r.json()["policy"]["revoke_unused_after_days"] == 7
    r = http.patch(f"/v1/tenants/{tenant.id}",
                   json={"policy": {"revoke_unused_after_days": None}},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200 and r.json()["policy"]["revoke_unused_after_days"] is None


def test_the_policy_warns_then_revokes_and_spares_a_key_used_meanwhile(
    site: tuple[Keyplane, httpx2.Client, Tenant], clock: SettableClock
) -> None:
    kp, http, tenant = site
    op = operator(kp)
    mk = tenant.management_key
    start = clock.now()
    receiver = Receiver().start()
    try:
        r = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["key.*"]},
                      headers=auth(mk))
        assert r.status_code == 201, r.text
        receiver.secrets.append(r.json()["secret"])
        r = http.patch(f"/v1/tenants/{tenant.id}",
                       json={"policy": {"revoke_unused_after_days": 30}}, headers=auth(mk))
        assert r.status_code == 200, r.text
        keys = {name: create_key(http, mk, name=name, scopes=["contacts:read"])
                for name in ("idle", "busy", "revived")}
        ids = {k["id"]: name for name, k in keys.items()}
        wait_until(lambda: len(receiver.of_type("key.created")) == 3, 10)

        def run(**kw: Any) -> PolicyRun | None:
            return kp.hygiene.run(**kw)

        def names(found: list[str]) -> set[str]:
            return {ids.get(i, "ops") for i in found}

        clock.advance(days=22)
        assert code(http, op, keys["busy"]["key"]) == "VALID"  # flushed by the run itself
        done = run()
        assert done is not None and done.warned == [] and done.revoked == []
        clock.advance(days=1)  # day 23: 7 days before day 30
        done = run()
        assert done is not None
        assert names(done.warned) == {"idle", "revived", "ops"} and done.revoked == []
        assert run() is None  # another run within the interval: the lease says no
        again = run(force=True)
        assert again is not None and again.warned == []  # each key is warned once
        warned = {e["target"]: e for e in audit(http, op, tenant, "key.unused_warning")}
        assert set(warned) == set(done.warned)
        idle_warning = warned[keys["idle"]["id"]]["details"]
        assert idle_warning["notify"] == [tenant.admin_id]
        assert when(idle_warning["revoke_at"]) == start + timedelta(days=30)
        wait_until(lambda: len(receiver.of_type("key.unused_warning")) == 3, 10)
        sent = {r.payload["data"]["object"]["id"] for r in receiver.of_type("key.unused_warning")}
        assert sent == set(done.warned)

        clock.advance(days=2)  # day 25: the revived key is used after its warning
        assert code(http, op, keys["revived"]["key"]) == "VALID"
        clock.advance(days=4, hours=23)
        done = run()
        assert done is not None and done.revoked == []  # not yet 30 days
        clock.advance(hours=1)  # day 30
        done = run()
        assert done is not None
        assert names(done.revoked) == {"idle", "ops"} and done.warned == []
        assert code(http, op, keys["idle"]["key"]) == "REVOKED"
        assert code(http, op, keys["revived"]["key"]) == "VALID"
        assert code(http, op, keys["busy"]["key"]) == "VALID"
        revoked = audit(http, op, tenant, "key.revoked")
        assert {e["target"] for e in revoked} == set(done.revoked)
        assert all(e["details"]["reason"] == "unused" and e["actor"] == "policy:revoke_unused"
                   for e in revoked)
        wait_until(lambda: len(receiver.of_type("key.revoked")) == 2, 10)
        clock.advance(hours=2)
        later = run(force=True)
        assert later is not None and later.revoked == []  # revoked once
        assert "idle" not in report(http, op, tenant_id=tenant.id)
    finally:
        receiver.stop()


def test_two_instances_run_the_job_once(
    keyplane: Keyplane, database: tuple[str, str | None], tmp_path: Path, clock: SettableClock
) -> None:
    url, schema = database
    other = build(make_settings(tmp_path, url), clock=clock, schema=schema)
    try:
        tenant = make_tenant(keyplane)
        keyplane.tenants.update(SYSTEM, tenant.id, {"policy": {"revoke_unused_after_days": 30}})
        made = {keyplane.keys.create(SYSTEM, tenant.id, {
            "name": f"k{i}", "scopes": ["contacts:read"], "owner_id": tenant.admin_id,
        }).key.id for i in range(12)}
        made.add(kp_key_of(keyplane, tenant))

        def together(call: Callable[[Keyplane], PolicyRun | None]) -> list[PolicyRun | None]:
            barrier = threading.Barrier(2)
            out: list[PolicyRun | None] = [None, None]

            def go(i: int, kp: Keyplane) -> None:
                barrier.wait()
                out[i] = call(kp)

            threads = [threading.Thread(target=go, args=(i, kp))
                       for i, kp in enumerate((keyplane, other))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return out

        clock.advance(days=23)
        runs = together(lambda kp: kp.hygiene.run())
        ran = [r for r in runs if r is not None]
        assert len(ran) == 1  # the lease: one instance runs it
        assert set(ran[0].warned) == made
        clock.advance(days=7)
        # even forced, overlapping runs revoke each key once
        runs = together(lambda kp: kp.hygiene.run(force=True))
        revoked = [k for r in runs if r is not None for k in r.revoked]
        assert sorted(revoked) == sorted(made)
        with keyplane.ctx.uow(readonly=True) as uow:
            events = uow.audit.page(tenant.id, action="key.revoked", limit=100, cursor=None)
            warnings = uow.audit.page(tenant.id, action="key.unused_warning", limit=100,
                                      cursor=None)
        assert sorted(e.target for e in events.items) == sorted(made)
        assert sorted(e.target for e in warnings.items) == sorted(made)
    finally:
        other.close()


def kp_key_of(kp: Keyplane, tenant: Tenant) -> str:
    """The id of the tenant's management key (``make_tenant``'s "ops")."""
    page = kp.keys.list(SYSTEM, tenant.id, limit=200)
    return next(k.id for k in page.items if k.name == "ops")


def test_serve_runs_the_policy_on_its_timer(
    database: tuple[str, str | None], tmp_path: Path, clock: SettableClock
) -> None:
    url, schema = database
    with serving(url, schema, tmp_path, clock, hygiene_interval_seconds=0.05) as (kp, _http):
        tenant = make_tenant(kp)
        kp.tenants.update(SYSTEM, tenant.id, {"policy": {"revoke_unused_after_days": 7}})
        idle = kp.keys.create(SYSTEM, tenant.id, {"name": "idle", "scopes": ["contacts:read"],
                                                  "owner_id": tenant.admin_id}).key

        def warnings() -> int:
            with kp.ctx.uow(readonly=True) as uow:
                return len(uow.audit.page(tenant.id, action="key.unused_warning", limit=10,
                                          cursor=None).items)

        clock.advance(days=4)  # the timer's next lease (the clock moved past the last one)
        wait_until(lambda: warnings() == 2, 10)  # "idle" and make_tenant's "ops"
        clock.advance(days=3)
        def revoked() -> bool:
            with kp.ctx.uow(readonly=True) as uow:
                key = uow.keys.get_any(idle.id)
                return key is not None and key.revoked_at is not None

        wait_until(revoked, 10)
        assert warnings() == 2


def test_keyplane_hygiene_run_for_cron(
    keyplane: Keyplane, clock: SettableClock, cli: Cli  # noqa: F811
) -> None:
    real = clock.now()
    clock.set(real - timedelta(days=40))  # the CLI runs on the real clock
    tenant = make_tenant(keyplane)
    keyplane.tenants.update(SYSTEM, tenant.id, {"policy": {"revoke_unused_after_days": 30}})
    idle = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "idle", "scopes": ["contacts:read"], "owner_id": tenant.admin_id}).key
    ops = kp_key_of(keyplane, tenant)
    first = cli.json("hygiene", "run")
    assert first["ran"] is True and set(first["warned"]) == {idle.id, ops}
    assert first["revoked"] == []
    assert cli.json("hygiene", "run") == {"ran": False, "warned": [], "revoked": []}
    assert "Another instance ran" in cli.ok("hygiene", "run")
    forced = cli.json("keys", "report", "--tenant", tenant.id, "--apply-policy", "--force")
    assert forced["policy"] == {"ran": True, "warned": [], "revoked": []}
    assert {i["key"]["id"] for i in forced["items"]} == {idle.id, ops}


def test_the_console_shows_the_report(
    keyplane: Keyplane, http: httpx2.Client, tenant: Tenant, clock: SettableClock
) -> None:
    create_key(http, tenant.management_key, name="stale-zapier", scopes=["contacts:write"])
    clock.advance(days=8)
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get("/hygiene")
    assert page.status_code == 200, page.text
    assert "stale-zapier" in page.text and "Never used" in page.text
    assert 'href="/hygiene" aria-current="page"' in page.text
    page = http.get("/hygiene", params={"reason": "owner_disabled"})
    assert page.status_code == 200 and "stale-zapier" not in page.text
    assert "No key needs attention" in page.text
    page = http.get("/hygiene", params={"unused_days": "1", "reason": "write_scopes_unused"})
    assert "stale-zapier" in page.text and "Edit scopes unused" in page.text
    assert http.get("/hygiene", params={"unused_days": "x"}).status_code == 200
