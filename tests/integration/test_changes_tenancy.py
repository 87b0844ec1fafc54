"""A tenant's change stream names only that tenant's objects: never another tenant's keys,
members, connections or apps, by long poll or by server-sent events, on SQLite and PostgreSQL.
(``tests/sdk/test_app_suspension.py``: a suspended app still reaches the gateways whose cached
tokens it ends.)"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.oauth_support import Partner, approved_app, exchange, get_code
from tests.integration.procs import wait_until
from tests.integration.test_changes import data, next_item, stream
from tests.support import RunningServer

GENERIC = {"catalogue", "all"}


def tenant_verifier(kp: Keyplane, tenant: Tenant) -> str:
    return kp.keys.create(SYSTEM, tenant.id, {
        "name": "gw", "owner_id": tenant.admin_id, "scopes": ["keys:verify"],
        "require_tls": False}).secret


def connect(http: httpx2.Client, server: RunningServer, partner: Partner,
            tenant: Tenant) -> dict[str, Any]:
    """``tenant``'s admin connects ``partner`` (through the real sign-in and consent pages)."""
    with httpx2.Client(base_url=server.url, timeout=10) as browser:
        code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    r = exchange(http, partner, code, verifier)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture
def world(http: httpx2.Client, server: RunningServer, keyplane: Keyplane, tenant: Tenant,
          operator_key: str, verifier_key: str) -> dict[str, Any]:
    """Acme (``tenant``) registers two apps; Globex connects one of them; Initech has nothing
    to do with either. Then each tenant's keys change, and the operator suspends both apps."""
    globex, initech = make_tenant(keyplane, "Globex"), make_tenant(keyplane, "Initech")
    verifiers = {t.id: tenant_verifier(keyplane, t) for t in (tenant, globex, initech)}
    start = int(http.get("/v1/changes", headers=auth(verifier_key)).json()["position"])
    connected = approved_app(http, tenant.management_key, operator_key)
    unrelated = approved_app(http, tenant.management_key, operator_key, name="Other")
    connect(http, server, connected, globex)
    own: dict[str, set[str]] = {}
    for t in (tenant, globex, initech):
        issued = keyplane.keys.create(SYSTEM, t.id, {"name": "k", "owner_id": t.admin_id,
                                                     "scopes": ["contacts:read"]})
        keyplane.keys.revoke(SYSTEM, t.id, issued.key.id)
        keyplane.tenants.update(SYSTEM, t.id, {"name": f"{t.id} renamed"})
        own[t.id] = {t.id, issued.key.id, t.admin_id}
    for app in (connected, unrelated):
        r = http.post(f"/v1/apps/{app.app_id}/suspend", json={"reason": "abuse"},
                      headers=auth(operator_key))
        assert r.status_code == 200, r.text
    # a last change each tenant sees, so that a stream reader knows it has everything
    last: dict[str, str] = {}
    for t in (tenant, globex, initech):
        issued = keyplane.keys.create(SYSTEM, t.id, {"name": "last", "owner_id": t.admin_id,
                                                     "scopes": ["contacts:read"]})
        keyplane.keys.revoke(SYSTEM, t.id, issued.key.id)
        own[t.id].add(issued.key.id)
        last[t.id] = issued.key.id
    everything = http.get("/v1/changes", params={"after": start, "wait": 0},
                          headers=auth(verifier_key)).json()
    wait_until(lambda: keyplane.feed.stable_head >= everything["position"], 5)
    return {"acme": tenant, "globex": globex, "initech": initech, "start": start,
            "verifiers": verifiers, "own": own, "last": last, "connected": connected.app_id,
            "unrelated": unrelated.app_id}


def polled(http: httpx2.Client, key: str, after: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    while True:
        r = http.get("/v1/changes", params={"after": after, "wait": 0}, headers=auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        out += [(i["kind"], i["ref"]) for i in body["items"]]
        if not body["items"]:
            return out
        after = body["position"]


def streamed(url: str, key: str, after: int, last_ref: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    with stream(url + "/v1/changes", key, **{"Last-Event-ID": str(after)}) as (_, items):
        assert next_item(items)["event"] == "position"
        while not out or out[-1][1] != last_ref:
            change = data(next_item(items))
            out.append((change["kind"], change["ref"]))
    return out


@pytest.mark.parametrize("how", ["poll", "sse"])
def test_a_tenant_stream_names_nothing_of_another_tenant(
        how: str, http: httpx2.Client, server: RunningServer, world: dict[str, Any]) -> None:
    def seen(t: Tenant) -> list[tuple[str, str]]:
        key = world["verifiers"][t.id]
        if how == "poll":
            return polled(http, key, world["start"])
        return streamed(server.url, key, world["start"], world["last"][t.id])

    acme, globex, initech = world["acme"], world["globex"], world["initech"]
    connected, unrelated = world["connected"], world["unrelated"]
    # Initech: its own changes only; neither app (both are Acme's), nothing of Acme or Globex
    initech_seen = seen(initech)
    assert initech_seen, "the tenant saw its own changes"
    for kind, ref in initech_seen:
        assert kind in GENERIC or ref in world["own"][initech.id], (kind, ref)
    # Globex: its own changes, and the suspension of the app it is connected to (its tokens
    # end), but not the other app of Acme's
    globex_seen = seen(globex)
    apps = [ref for kind, ref in globex_seen if kind == "app"]
    assert apps and set(apps) == {connected}
    for kind, ref in globex_seen:
        if kind == "connection":
            continue  # its own connection to the app (its id is Globex's)
        assert kind in GENERIC or kind == "app" or ref in world["own"][globex.id], (kind, ref)
    flat = " ".join(f"{k} {r}" for k, r in globex_seen + initech_seen)
    for foreign in (acme.id, acme.admin_id, unrelated, *world["own"][acme.id]):
        assert foreign not in flat
    # Acme registered both apps: it sees both, and still nothing of the others
    acme_seen = seen(acme)
    assert {ref for kind, ref in acme_seen if kind == "app"} == {connected, unrelated}
    assert not {r for _, r in acme_seen} & (world["own"][globex.id] | world["own"][initech.id])
