"""A weaker credential never takes over, copies, widens or mints a stronger key (issue 8, items 1
and 2), tried over real HTTP as an attacker would: every key action, by every kind of weaker
credential, against a key that reaches further. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.helpers import code, create_key

STRONG_SCOPES = ["keys:write", "members:write", "payments:write", "tenant:write"]


@dataclass
class Scene:
    strong: dict[str, Any]  # members:write + tenant:write + payments:write, owned by the admin
    locked: dict[str, Any]  # as strong, but locked by the admin
    attackers: dict[str, str]  # name -> secret of a weaker credential
    restricted_admin: str  # an admin confined to a contacts-only data-access group


def _key(kp: Keyplane, tenant_id: str, owner_id: str, scopes: list[str],
         **extra: Any) -> dict[str, Any]:
    issued = kp.keys.create(SYSTEM, tenant_id, {"name": "k", "owner_id": owner_id,
                                                "scopes": scopes, "require_tls": False, **extra})
    return {"id": issued.key.id, "key": issued.secret}


@pytest.fixture
def scene(keyplane: Keyplane, tenant: Tenant) -> Scene:
    kp, tid = keyplane, tenant.id
    strong = _key(kp, tid, tenant.admin_id, STRONG_SCOPES)
    locked = _key(kp, tid, tenant.admin_id, STRONG_SCOPES)
    kp.keys.update(SYSTEM, tid, locked["id"], {"enabled": False})
    group = kp.groups.create(SYSTEM, tid, {"name": "contacts only",
                                           "scopes": ["contacts:write"]})
    restricted = kp.principals.create(SYSTEM, tid, PrincipalKind.MEMBER, {
        "email": "restricted@example.com", "role": "admin"})
    # made with payments:write, then its owner is confined to a group: effective contacts only
    confined = _key(kp, tid, restricted.id, ["contacts:write", "keys:write", "payments:write"])
    kp.principals.update(SYSTEM, tid, restricted.id, {"group_ids": [group.id]})
    other = make_tenant(kp, "Globex")
    return Scene(strong=strong, locked=locked, restricted_admin=restricted.id, attackers={
        "keys:read+keys:write": _key(kp, tid, tenant.admin_id, ["keys:read", "keys:write"])["key"],
        "contacts:read+keys:write": _key(kp, tid, tenant.admin_id,
                                         ["contacts:read", "keys:write"])["key"],
        "group-confined admin": confined["key"],
        "another tenant's admin key": other.management_key,
    })


def _attempts(s: Scene) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(label, method, path, body) of every action that would hand over or widen a key."""
    strong, locked = s.strong["id"], s.locked["id"]
    return [
        ("rotate the stronger key", "POST", f"/v1/keys/{strong}/rotate", {}),
        ("rotate it now", "POST", f"/v1/keys/{strong}/rotate", {"grace_period_seconds": 0}),
        ("duplicate it", "POST", f"/v1/keys/{strong}/duplicate", {"name": "mine"}),
        ("narrow its scopes to its own", "PATCH", f"/v1/keys/{strong}",
         {"scopes": ["keys:read"]}),
        ("rename it", "PATCH", f"/v1/keys/{strong}", {"name": "renamed"}),
        ("lift its IP and TLS locks", "PATCH", f"/v1/keys/{strong}",
         {"allowed_ips": [], "require_tls": False}),
        ("unlock a locked stronger key", "PATCH", f"/v1/keys/{locked}", {"enabled": True}),
        ("mint members:write", "POST", "/v1/keys",
         {"name": "x", "scopes": ["members:write"], "require_tls": False}),
        ("mint a data scope it lacks", "POST", "/v1/keys",
         {"name": "x", "scopes": ["payments:write"], "require_tls": False}),
        ("mint through an unrestricted owner", "POST", "/v1/keys",
         {"name": "x", "scopes": ["payments:write"], "owner_id": None, "require_tls": False}),
    ]


@pytest.mark.parametrize("attacker", ["keys:read+keys:write", "contacts:read+keys:write",
                                      "group-confined admin", "another tenant's admin key"])
def test_a_weaker_credential_cannot_take_over_or_mint_a_stronger_key(
    http: httpx2.Client, tenant: Tenant, scene: Scene, verifier_key: str, attacker: str
) -> None:
    secret = scene.attackers[attacker]
    foreign = attacker == "another tenant's admin key"
    for label, method, path, body in _attempts(scene):
        if body is not None and "owner_id" in body:
            body = body | {"owner_id": tenant.admin_id}  # the unrestricted admin
        if foreign and path == "/v1/keys" and "owner_id" not in body:
            continue  # minting in its own tenant is its own business
        r = http.request(method, path, json=body, headers=auth(secret))
        if foreign:  # another tenant's keys and members do not exist for this caller
            expected = (404, "owner_id") if path == "/v1/keys" else (404, None)
            assert r.status_code == expected[0], (label, r.status_code, r.text)
            assert r.json()["error"].get("field") == expected[1], label
        else:
            assert r.status_code == 403, (label, r.status_code, r.text)
            assert r.json()["error"]["code"] == "insufficient_scope", label
        assert '"key":' not in r.text, label  # no secret of any key
        assert "kp_" not in r.text, label

    # nothing changed: the holder's secret still works with all its power, settings intact
    assert code(http, verifier_key, scene.strong["key"], scopes=STRONG_SCOPES) == "VALID"
    assert code(http, verifier_key, scene.locked["key"]) == "DISABLED"
    shown = http.get(f"/v1/keys/{scene.strong['id']}", headers=auth(tenant.management_key))
    assert shown.json()["scopes"] == STRONG_SCOPES
    assert shown.json()["name"] == "k" and shown.json()["require_tls"] is False
    # and no key reaching payments:write or members:write was minted
    listed = http.get("/v1/keys", params={"limit": 200}, headers=auth(tenant.management_key))
    holders = [k["id"] for k in listed.json()["items"] if "members:write" in k["scopes"]]
    assert sorted(holders) == sorted([scene.strong["id"], scene.locked["id"],
                                      _ops_key_id(http, tenant)])


def _ops_key_id(http: httpx2.Client, tenant: Tenant) -> str:
    r = http.get("/v1/keys", params={"q": "ops"}, headers=auth(tenant.management_key))
    return str(r.json()["items"][0]["id"])


def test_the_reviewed_takeover_chain_is_closed(
    http: httpx2.Client, tenant: Tenant, scene: Scene, verifier_key: str
) -> None:
    """The review's exploit: rotate a members:write + tenant:write key with a keys:write key,
    then use its new secret to create an admin and change the tenant policy."""
    weak = scene.attackers["keys:read+keys:write"]
    r = http.post(f"/v1/keys/{scene.strong['id']}/rotate", json={}, headers=auth(weak))
    assert r.status_code == 403
    assert "members:write" in r.json()["error"]["message"]
    # the weak key cannot do the chain's next steps itself either
    r = http.post("/v1/members", json={"email": "evil@example.com", "role": "admin",
                                       "password": "correct horse battery staple"},
                  headers=auth(weak))
    assert r.status_code == 403
    r = http.patch(f"/v1/tenants/{tenant.id}", json={"policy": {"allow_non_expiring": True}},
                   headers=auth(weak))
    assert r.status_code == 403
    assert code(http, verifier_key, scene.strong["key"], scopes=["members:write"]) == "VALID"


def test_lock_and_revoke_stay_open_to_keys_write(
    http: httpx2.Client, scene: Scene, verifier_key: str
) -> None:
    weak = auth(scene.attackers["keys:read+keys:write"])
    r = http.patch(f"/v1/keys/{scene.strong['id']}", json={"enabled": False}, headers=weak)
    assert r.status_code == 200, r.text
    assert code(http, verifier_key, scene.strong["key"]) == "DISABLED"
    r = http.delete(f"/v1/keys/{scene.strong['id']}", headers=weak)
    assert r.status_code == 204
    assert code(http, verifier_key, scene.strong["key"]) == "REVOKED"


def test_a_credential_manages_keys_within_its_own_reach(
    http: httpx2.Client, tenant: Tenant, scene: Scene, verifier_key: str
) -> None:
    """The rule refuses only what reaches beyond the caller: within it, everything works."""
    caller = scene.attackers["contacts:read+keys:write"]
    mine = create_key(http, caller, scopes=["contacts:read"], require_tls=False)
    r = http.post(f"/v1/keys/{mine['id']}/rotate", json={"grace_period_seconds": 0},
                  headers=auth(caller))
    assert r.status_code == 200, r.text
    assert code(http, verifier_key, r.json()["key"], scopes=["contacts:read"]) == "VALID"
    r = http.post(f"/v1/keys/{mine['id']}/duplicate", json={"name": "copy"},
                  headers=auth(caller))
    assert r.status_code == 201, r.text
    r = http.patch(f"/v1/keys/{mine['id']}", json={"scopes": ["contacts:write"]},
                   headers=auth(caller))
    assert r.status_code == 403  # widening beyond itself: Edit is more than View
    assert r.json()["error"]["field"] == "scopes"
    # a key owned by the group-confined admin gets only what that admin holds
    r = http.post("/v1/keys", json={"name": "x", "scopes": ["payments:read"],
                                    "owner_id": scene.restricted_admin},
                  headers=auth(tenant.management_key))
    assert r.status_code == 422
    assert "owner" in r.json()["error"]["message"]
