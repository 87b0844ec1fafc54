"""A new password ends the member's other sessions (issue 8, item 7), and a tenant always keeps
an enabled admin (item 10). Real server, real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import AuthenticationError, Conflict
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.repositories import SqlPrincipals
from tests.conftest import Tenant, auth
from tests.integration.oauth_support import sign_in
from tests.support import RunningServer

OLD = "the old password of mo"
NEW = "the new password of mo"


@pytest.fixture
def browsers(server: RunningServer) -> Iterator[list[httpx2.Client]]:
    clients = [httpx2.Client(base_url=server.url, timeout=10) for _ in range(3)]
    try:
        yield clients
    finally:
        for c in clients:
            c.close()


def signed_in(browser: httpx2.Client) -> bool:
    return "You are signed in" in browser.get("/signin").text


def member(http: httpx2.Client, tenant: Tenant, role: str = "member",
           password: str | None = OLD, email: str = "mo@example.com") -> str:
    body: dict[str, Any] = {"email": email, "role": role}
    if password:
        body["password"] = password
    r = http.post("/v1/members", json=body, headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def patch(http: httpx2.Client, tenant: Tenant, pid: str, **body: Any) -> httpx2.Response:
    return http.patch(f"/v1/members/{pid}", json=body, headers=auth(tenant.management_key))


# -- item 7: a new password ends sessions -----------------------------------------------------

def test_a_password_change_ends_the_members_sessions(
        http: httpx2.Client, tenant: Tenant, browsers: list[httpx2.Client]) -> None:
    mo = member(http, tenant)
    one, two, admin = browsers
    for b in (one, two):
        assert sign_in(b, "mo@example.com", OLD).status_code == 303 and signed_in(b)
    assert sign_in(admin, tenant.admin_email, tenant.admin_password).status_code == 303
    old_cookie = one.cookies["kp_session"]

    r = patch(http, tenant, mo, password=NEW)
    assert r.status_code == 200 and "password" not in r.text.replace("has_password", "")

    for b in (one, two):  # both of Mo's sessions are over: the sign-in form again
        assert not signed_in(b)
        r = b.get("/signin", params={"next": "/oauth/authorize?client_id=x"})
        assert r.status_code == 200 and "Sign in to Keyplane" in r.text
    one.cookies.set("kp_session", old_cookie)
    assert not signed_in(one)
    assert signed_in(admin)  # another member's session is not touched
    one.cookies.clear()
    assert sign_in(one, "mo@example.com", OLD).status_code == 401
    assert sign_in(one, "mo@example.com", NEW).status_code == 303 and signed_in(one)

    events = http.get("/v1/audit-events", params={"action": "member.updated"},
                      headers=auth(tenant.management_key)).json()["items"]
    assert events[0]["details"]["sessions_ended"] == 2
    assert OLD not in str(events) and NEW not in str(events)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # one subprocess run is enough
def test_the_cli_password_reset_ends_the_members_sessions(
        keyplane: Keyplane, tenant: Tenant, database: tuple[str, str | None],
        tmp_path: Path) -> None:
    sessions = keyplane.sessions
    outcome = sessions.sign_in(tenant.admin_email, tenant.admin_password, ip=None)
    assert isinstance(outcome, tuple)
    raw = outcome[0]
    assert sessions.resolve(raw) is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env.update(KEYPLANE_DATA_DIR=str(tmp_path / "data"), KEYPLANE_DATABASE_URL=database[0])
    done = subprocess.run(
        [str(Path(sys.executable).with_name("keyplane")), "users", "set-password", "--tenant",
         tenant.id, "--email", tenant.admin_email.upper(), "--json"], input=NEW + "\n",
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == tenant.admin_id and NEW not in done.stdout
    assert sessions.resolve(raw) is None
    with pytest.raises(AuthenticationError):
        sessions.sign_in(tenant.admin_email, tenant.admin_password, ip=None)
    assert sessions.sign_in(tenant.admin_email, NEW, ip=None)


def test_other_changes_leave_sessions_alone(
        http: httpx2.Client, tenant: Tenant, browsers: list[httpx2.Client]) -> None:
    mo = member(http, tenant)
    one = browsers[0]
    sign_in(one, "mo@example.com", OLD)
    assert patch(http, tenant, mo, name="Mo", role="read_only").status_code == 200
    assert signed_in(one)


# -- item 10: the last admin ------------------------------------------------------------------

def test_the_only_admin_cannot_be_demoted_disabled_or_deleted(
        http: httpx2.Client, tenant: Tenant, browsers: list[httpx2.Client]) -> None:
    for body in ({"role": "member"}, {"role": "read_only"}, {"enabled": False},
                 {"role": "member", "enabled": False}):
        r = patch(http, tenant, tenant.admin_id, **body)
        assert r.status_code == 409, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "last_admin"
        assert "only enabled admin" in error["message"]
        assert "make another member an admin first" in error["message"]
        assert error["field"] == ("enabled" if body.get("enabled") is False else "role")
    r = http.delete(f"/v1/members/{tenant.admin_id}", headers=auth(tenant.management_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    after = http.get(f"/v1/members/{tenant.admin_id}", headers=auth(tenant.management_key))
    assert after.json()["role"] == "admin" and after.json()["enabled"] is True
    # harmless changes to the last admin still work
    assert patch(http, tenant, tenant.admin_id, name="Boss", role="admin").status_code == 200
    assert sign_in(browsers[0], tenant.admin_email, tenant.admin_password).status_code == 303


def test_with_two_admins_the_first_demotion_works_and_the_second_is_refused(
        http: httpx2.Client, tenant: Tenant, operator_key: str) -> None:
    # the operator acts here: the tenant's key is owned by the first admin, so demoting that
    # admin takes the key's rights away with it
    def op(method: str, pid: str, **body: Any) -> httpx2.Response:
        return http.request(method, f"/v1/members/{pid}", params={"tenant_id": tenant.id},
                            json=body or None, headers=auth(operator_key))

    second = member(http, tenant, role="admin")
    assert op("PATCH", tenant.admin_id, role="member").status_code == 200
    r = op("PATCH", second, role="member")
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    assert op("DELETE", second).status_code == 409
    # promote another first, then it works
    assert op("PATCH", tenant.admin_id, role="admin").status_code == 200
    assert op("PATCH", second, enabled=False).status_code == 200
    assert op("DELETE", tenant.admin_id).status_code == 409


def test_disabled_admins_and_api_only_admins_do_not_count(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    disabled = member(http, tenant, role="admin")
    assert patch(http, tenant, disabled, enabled=False).status_code == 200
    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "API - robot", "role": "admin"})
    assert patch(http, tenant, tenant.admin_id, role="member").status_code == 409
    # the service account itself may be demoted or deleted freely
    r = http.patch(f"/v1/service-accounts/{robot.id}", json={"role": "member"},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    r = http.delete(f"/v1/service-accounts/{robot.id}", headers=auth(tenant.management_key))
    assert r.status_code == 204, r.text


def test_the_rule_holds_for_the_operator_too(keyplane: Keyplane, tenant: Tenant) -> None:
    with pytest.raises(Conflict) as refused:
        keyplane.principals.delete(SYSTEM, tenant.id, tenant.admin_id)
    assert refused.value.code == "last_admin"


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_two_concurrent_demotions_of_the_last_two_admins_do_not_both_succeed(
        keyplane: Keyplane, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    second = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                        {"email": "second@example.com", "role": "admin"})
    write = SqlPrincipals.update

    def slow_write(self: SqlPrincipals, principal: Any) -> None:
        time.sleep(0.4)  # widen the gap between the check and the write
        write(self, principal)

    monkeypatch.setattr(SqlPrincipals, "update", slow_write)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(pid: str) -> None:
        start.wait()
        try:
            keyplane.principals.update(SYSTEM, tenant.id, pid, {"role": "member"})
            outcomes.append("ok")
        except Conflict as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=demote, args=(pid,))
               for pid in (tenant.admin_id, second.id)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["last_admin", "ok"]
    with keyplane.ctx.uow(readonly=True) as uow:
        assert uow.principals.count_admins(tenant.id) == 1
