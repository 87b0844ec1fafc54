"""The tenant policy ``api_users_need_group`` (on by default): an API user (service account) in no
data-access group holds no data scopes. Over real HTTP, through /v1/verify and /v1/forward-auth,
on SQLite and PostgreSQL; members keep their behaviour."""

from __future__ import annotations

from html import unescape
from pathlib import Path
from typing import Any

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.console_support import form_token, signed_in
from tests.integration.forward_support import TRAEFIK, proxied
from tests.integration.helpers import create_key
from tests.integration.test_cli import Cli, cli

# the fixtures: Keyplane trusting the loopback proxy, with a route map; the CLI's environment
__all__ = ["cli", "proxied"]

NO_GROUP = "no data-access group"


def verifier(kp: Keyplane) -> str:
    return kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                         "require_tls": False}, operator=True).secret


def verdict(http: httpx2.Client, gateway: str, secret: str, **extra: Any) -> dict[str, Any]:
    r = http.post("/v1/verify", json={"key": secret, "tls": True, **extra}, headers=auth(gateway))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def forward(http: httpx2.Client, secret: str) -> httpx2.Response:
    return http.get("/v1/forward-auth", headers={**TRAEFIK, "X-API-Key": secret})


def group(http: httpx2.Client, t: Tenant, name: str, scopes: list[str]) -> str:
    r = http.post("/v1/groups", json={"name": name, "scopes": scopes},
                  headers=auth(t.management_key))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def api_user(http: httpx2.Client, t: Tenant, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/service-accounts", json={"name": "API - Zapier", **body},
                  headers=auth(t.management_key))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_an_api_user_in_no_group_holds_no_data_scopes_and_is_told_so(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    t = make_tenant(kp)
    mk = t.management_key
    # creating it says so, in the answer
    bare = api_user(http, t)
    assert bare["group_ids"] == [] and NO_GROUP in bare["note"]
    assert "INSUFFICIENT_SCOPE" in bare["note"]
    # a key reaching data cannot be issued to it, and the error says why
    r = http.post("/v1/keys", json={"name": "zap", "owner_id": bare["id"],
                                    "scopes": ["contacts:read"], "require_tls": False},
                  headers=auth(mk))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "scopes" and NO_GROUP in err["message"]
    # in a group: no note, and its keys work as before
    readers = group(http, t, "Readers", ["contacts:read"])
    grouped = api_user(http, t, group_ids=[readers])
    assert "note" not in grouped
    issued = create_key(http, mk, owner_id=grouped["id"], scopes=["contacts:read"],
                        require_tls=False)
    gateway = verifier(kp)
    ok = verdict(http, gateway, issued["key"], scopes=["contacts:read"])
    assert ok["code"] == "VALID" and ok["scopes"] == ["contacts:read"]
    assert forward(http, issued["key"]).status_code == 200


def test_removing_the_last_group_narrows_at_once_everywhere(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    t = make_tenant(kp)
    mk = t.management_key
    readers = group(http, t, "Readers", ["contacts:read"])
    user = api_user(http, t, group_ids=[readers])
    issued = create_key(http, mk, owner_id=user["id"], scopes=["contacts:read"],
                        require_tls=False)
    secret = issued["key"]
    gateway = verifier(kp)
    # remembered as VALID by both paths first (the caches must be dropped by the change)
    assert verdict(http, gateway, secret, scopes=["contacts:read"])["code"] == "VALID"
    assert verdict(http, gateway, secret)["code"] == "VALID"
    assert forward(http, secret).status_code == 200

    r = http.patch(f"/v1/service-accounts/{user['id']}", json={"group_ids": []},
                   headers=auth(mk))
    assert r.status_code == 200, r.text
    assert NO_GROUP in r.json()["note"]

    # narrowed, never widened: no data scope, whatever is asked, with the reason
    for asked in ({"scopes": ["contacts:read"]}, {}):
        answer = verdict(http, gateway, secret, **asked)
        assert answer["code"] == "INSUFFICIENT_SCOPE", answer
        assert NO_GROUP in answer["message"]
    r = forward(http, secret)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "insufficient_scope"
    assert NO_GROUP in r.json()["error"]["message"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]

    # back in a group: back to its group's reach
    r = http.patch(f"/v1/service-accounts/{user['id']}", json={"group_ids": [readers]},
                   headers=auth(mk))
    assert r.status_code == 200 and "note" not in r.json()
    assert verdict(http, gateway, secret, scopes=["contacts:read"])["code"] == "VALID"
    assert forward(http, secret).status_code == 200


def test_the_policy_can_be_turned_off_and_then_the_last_group_stays(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    t = make_tenant(kp)
    mk = t.management_key
    r = http.get(f"/v1/tenants/{t.id}", headers=auth(mk))
    assert r.json()["policy"]["api_users_need_group"] is True  # the default
    readers = group(http, t, "Readers", ["contacts:read"])
    user = api_user(http, t, group_ids=[readers])
    issued = create_key(http, mk, owner_id=user["id"], scopes=["contacts:read"],
                        require_tls=False)
    bare = api_user(http, t, name="API - bare")
    gateway = verifier(kp)

    r = http.patch(f"/v1/tenants/{t.id}", json={"policy": {"api_users_need_group": "yes"}},
                   headers=auth(mk))
    assert r.status_code == 422
    r = http.patch(f"/v1/tenants/{t.id}", json={"policy": {"api_users_need_group": False}},
                   headers=auth(mk))
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["api_users_need_group"] is False
    # off: a group-less API user reaches what a group-less member does
    loose = create_key(http, mk, owner_id=bare["id"], scopes=["contacts:write"],
                       require_tls=False)
    assert verdict(http, gateway, loose["key"], scopes=["contacts:write"])["code"] == "VALID"
    assert "note" not in api_user(http, t, name="API - another")
    # ... so taking an API user's last group away would widen it: refused
    r = http.patch(f"/v1/service-accounts/{user['id']}", json={"group_ids": []},
                   headers=auth(mk))
    assert r.status_code == 409, r.text
    assert r.json()["error"]["field"] == "group_ids"
    assert verdict(http, gateway, issued["key"], scopes=["contacts:read"])["code"] == "VALID"

    # turned back on: the group-less API user's key stops at once (the tenant change drops
    # every remembered answer of the tenant)
    assert verdict(http, gateway, loose["key"])["code"] == "VALID"
    r = http.patch(f"/v1/tenants/{t.id}", json={"policy": {"api_users_need_group": True}},
                   headers=auth(mk))
    assert r.status_code == 200, r.text
    answer = verdict(http, gateway, loose["key"], scopes=["contacts:read"])
    assert answer["code"] == "INSUFFICIENT_SCOPE" and NO_GROUP in answer["message"]
    assert forward(http, loose["key"]).status_code == 403


def test_members_keep_their_behaviour(proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = proxied
    t = make_tenant(kp)
    mk = t.management_key
    r = http.post("/v1/members", json={"email": "sam@example.com"}, headers=auth(mk))
    assert r.status_code == 201, r.text
    member = r.json()
    assert member["group_ids"] == [] and "note" not in member
    issued = create_key(http, mk, owner_id=member["id"], scopes=["contacts:write"],
                        require_tls=False)
    gateway = verifier(kp)
    assert verdict(http, gateway, issued["key"], scopes=["contacts:write"])["code"] == "VALID"
    readers = group(http, t, "Readers", ["contacts:read"])
    r = http.patch(f"/v1/members/{member['id']}", json={"group_ids": [readers]},
                   headers=auth(mk))
    assert r.status_code == 200
    assert verdict(http, gateway, issued["key"],
                   scopes=["contacts:write"])["code"] == "INSUFFICIENT_SCOPE"
    # a member's last group may go: it reaches what its role allows again (today's rule)
    r = http.patch(f"/v1/members/{member['id']}", json={"group_ids": []}, headers=auth(mk))
    assert r.status_code == 200 and "note" not in r.json()
    assert verdict(http, gateway, issued["key"], scopes=["contacts:write"])["code"] == "VALID"


def test_the_console_says_so_when_an_api_user_is_made_without_a_group(
        http: httpx2.Client, tenant: Tenant) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, "/api-users/new")
    r = http.post("/api-users", data={"csrf_token": token, "name": "Zapier robot",
                                      "role": "member"})
    assert r.status_code == 303, r.text
    robot = r.headers["location"].split("owner=")[1].split("&")[0]
    form = unescape(http.get(r.headers["location"]).text)
    assert "API user “Zapier robot” created" in form and NO_GROUP in form
    r = http.post("/keys", data={"csrf_token": token, "name": "Zap", "owner_id": robot,
                                 "scopes": ["contacts:write"], "expires_in_days": "30"})
    assert r.status_code == 422
    assert NO_GROUP in unescape(r.text)


def test_a_management_key_of_a_groupless_api_user_keeps_working(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    """Only data is out of reach: an admin API user's key of management scopes still manages."""
    kp, http = proxied
    t = make_tenant(kp)
    admin_robot = api_user(http, t, name="API - provisioning", role="admin")
    assert NO_GROUP in admin_robot["note"]
    issued = create_key(http, t.management_key, owner_id=admin_robot["id"],
                        scopes=["keys:write"], require_tls=False)
    r = http.get("/v1/keys", headers=auth(issued["key"]))
    assert r.status_code == 200, r.text
    assert verdict(http, verifier(kp), issued["key"])["code"] == "VALID"


def test_the_cli_says_so_too(cli: Cli) -> None:
    tid = cli.json("tenants", "create", "Acme")["id"]
    made = cli.json("service-accounts", "create", "--tenant", tid, "--name", "API - Zapier")
    assert made["group_ids"] == [] and NO_GROUP in made["note"]
    shown = " ".join(cli.ok("service-accounts", "create", "--tenant", tid, "--name",
                            "API - Make").split())
    assert "This API user is in no data-access group, so it holds no data scopes" in shown


def test_an_upgrade_keeps_existing_tenants_as_they_were_and_new_ones_get_the_policy(
        database: tuple[str, str | None], tmp_path: Path) -> None:
    """A tenant made before the upgrade keeps its group-less API users' access (policy off)
    until an admin turns it on; a tenant made afterwards starts with it on."""
    import sqlalchemy as sa

    from keyplane.bootstrap import build
    from keyplane.storage.sql import migrate
    from keyplane.storage.sql.engine import make_engine
    from tests.conftest import make_settings

    url, schema = database
    engine = make_engine(url, schema=schema)
    try:
        migrate.upgrade(engine, "0008_hygiene")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO tenants (id, name, enabled, created_at, default_expiry_days, "
                "allow_non_expiring, allowed_ips, require_tls_default) VALUES ('loc_old', "
                "'Old', :yes, '2026-01-01 00:00:00', 90, :no, '[]', :yes)"),
                {"yes": True, "no": False})
    finally:
        engine.dispose()
    kp = build(make_settings(tmp_path, url), schema=schema, migrate_db=True)
    try:
        assert kp.tenants.get(SYSTEM, "loc_old").policy.api_users_need_group is False
        new = kp.tenants.create(SYSTEM, {"name": "New"})
        assert kp.tenants.get(SYSTEM, new.id).policy.api_users_need_group is True
    finally:
        kp.close()
