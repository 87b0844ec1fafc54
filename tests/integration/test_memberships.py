"""One person, several tenants (issue 8, item 5): an email is unique within a tenant only, adding
an address never tells a tenant whether another one has it, and one sign-in opens exactly the
memberships whose own password matched, with a choice of workspace when there are several.
Real server, real SQLite and PostgreSQL."""

from __future__ import annotations

import re
from html import unescape

import httpx2
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql import migrate
from keyplane.storage.sql.engine import make_engine
from keyplane.storage.sql.tables import metadata
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.oauth_support import (
    approved_app,
    authorize_url,
    consent,
    csrf,
    exchange,
    introspect,
    pkce,
    redirect_params,
    sign_in,
)
from tests.support import RunningServer

EMAIL = "sam@example.com"
PASSWORD_X = "the password sam uses"
PASSWORD_Y = "another password of sam"
CHOOSE = "Choose a workspace"
SIGNED_IN = "You are signed in"


def add_member(http: httpx2.Client, tenant: Tenant, email: str,
               password: str | None = None, role: str = "admin") -> httpx2.Response:
    body = {"email": email, "role": role, **({"password": password} if password else {})}
    return http.post("/v1/members", json=body, headers=auth(tenant.management_key))


def workspaces(page: httpx2.Response) -> dict[str, str]:
    """The choice page's buttons: tenant name -> principal id."""
    return {name.strip(): pid for pid, name in re.findall(
        r'name="principal_id" value="([^"]+)">([^<]+)</button>', page.text)}


def choice_token(html: str) -> str:
    found = re.search(r'name="choice" value="([^"]+)"', html)
    assert found, html
    return unescape(found.group(1))


def choose(http: httpx2.Client, page: httpx2.Response | str, principal_id: str,
           next_path: str = "") -> httpx2.Response:
    html = page if isinstance(page, str) else page.text
    return http.post("/signin/workspace", data={
        "csrf_token": csrf(html), "choice": choice_token(html),
        "principal_id": principal_id, "next": next_path})


def session_principal(keyplane: Keyplane, raw: str) -> str:
    signed_in = keyplane.sessions.resolve(raw)
    assert signed_in is not None
    return signed_in.principal.id


# -- adding an address ------------------------------------------------------------------------

def test_an_address_another_tenant_has_is_added_like_a_new_one(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    beta = make_tenant(keyplane, "Beta", email=EMAIL)
    taken_elsewhere = add_member(http, tenant, EMAIL, "a password acme chose")
    brand_new = add_member(http, tenant, "fresh@example.com", "a password acme chose")
    assert taken_elsewhere.status_code == brand_new.status_code == 201, taken_elsewhere.text
    out = taken_elsewhere.json()
    assert set(out) == set(brand_new.json())
    assert out["email"] == EMAIL and out["tenant_id"] == tenant.id
    assert beta.id not in taken_elsewhere.text and beta.admin_id not in taken_elsewhere.text
    assert "Beta" not in taken_elsewhere.text
    # Beta's member is untouched: still Beta's admin, still its own password
    r = http.get(f"/v1/members/{beta.admin_id}", headers=auth(beta.management_key))
    assert r.status_code == 200 and r.json()["role"] == "admin"


def test_the_same_address_twice_in_one_tenant_is_a_conflict(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    make_tenant(keyplane, "Beta", email=EMAIL)
    assert add_member(http, tenant, EMAIL).status_code == 201
    again = add_member(http, tenant, EMAIL.upper(), role="member")  # emails are case-blind
    assert again.status_code == 409, again.text
    error = again.json()["error"]
    assert error["field"] == "email" and "already exists" in error["message"]
    # the admin's own address is taken in its own tenant too
    assert add_member(http, tenant, tenant.admin_email).status_code == 409


def test_the_cli_path_adds_an_address_another_tenant_has(keyplane: Keyplane,
                                                         tenant: Tenant) -> None:
    # `keyplane users create` calls this service with the tenant it is given
    make_tenant(keyplane, "Beta", email=EMAIL)
    member = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                        {"email": EMAIL, "password": PASSWORD_X})
    assert member.tenant_id == tenant.id


# -- signing in -------------------------------------------------------------------------------

def test_a_tenant_adding_someones_address_with_its_own_password_opens_only_its_membership(
        http: httpx2.Client, server: RunningServer, tenant: Tenant, keyplane: Keyplane) -> None:
    beta = make_tenant(keyplane, "Beta", email=EMAIL)
    r = add_member(http, tenant, EMAIL, "acme chose this one")
    assert r.status_code == 201
    mine = r.json()["id"]
    # Beta's person signs in as before, straight into Beta: no choice, nothing of Acme
    with httpx2.Client(base_url=server.url, timeout=10) as person:
        r = sign_in(person, EMAIL, beta.admin_password)
        assert r.status_code == 303 and r.headers["location"] == "/"
        page = person.get("/signin").text
        assert SIGNED_IN in page and "Beta" in page and "Acme" not in page
        assert session_principal(keyplane, person.cookies["kp_session"]) == beta.admin_id
    # Acme's password opens Acme's membership and never Beta's
    with httpx2.Client(base_url=server.url, timeout=10) as acme:
        r = sign_in(acme, EMAIL, "acme chose this one")
        assert r.status_code == 303
        page = acme.get("/signin").text
        assert "Acme" in page and "Beta" not in page
        assert session_principal(keyplane, acme.cookies["kp_session"]) == mine


def test_one_signin_offers_exactly_the_workspaces_whose_password_matched(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    beta = make_tenant(keyplane, "Beta")
    gamma = make_tenant(keyplane, "Gamma")
    acme_id = add_member(http, tenant, EMAIL, PASSWORD_X).json()["id"]
    beta_id = add_member(http, beta, EMAIL, PASSWORD_X, role="member").json()["id"]
    gamma_id = add_member(http, gamma, EMAIL, PASSWORD_Y).json()["id"]

    page = sign_in(http, EMAIL, PASSWORD_X)
    assert page.status_code == 200 and CHOOSE in page.text
    assert "kp_session" not in http.cookies  # nobody is signed in before choosing
    assert workspaces(page) == {"Acme": acme_id, "Beta": beta_id}
    assert "Gamma" not in page.text and gamma_id not in page.text

    r = choose(http, page, beta_id)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert session_principal(keyplane, http.cookies["kp_session"]) == beta_id
    signed_in = http.get("/signin").text
    assert SIGNED_IN in signed_in and "Beta" in signed_in and "member of" in signed_in

    http.cookies.clear()
    r = sign_in(http, EMAIL, PASSWORD_Y)  # one match: no choice
    assert r.status_code == 303
    assert session_principal(keyplane, http.cookies["kp_session"]) == gamma_id

    http.cookies.clear()
    wrong = sign_in(http, EMAIL, "neither of the two")
    assert wrong.status_code == 401 and "The email or password is not right." in wrong.text


def test_a_choice_opens_only_what_it_offered_and_only_in_its_browser(
        http: httpx2.Client, server: RunningServer, tenant: Tenant, keyplane: Keyplane) -> None:
    beta = make_tenant(keyplane, "Beta")
    gamma = make_tenant(keyplane, "Gamma")
    acme_id = add_member(http, tenant, EMAIL, PASSWORD_X).json()["id"]
    add_member(http, beta, EMAIL, PASSWORD_X)
    gamma_id = add_member(http, gamma, EMAIL, PASSWORD_Y).json()["id"]
    page = sign_in(http, EMAIL, PASSWORD_X)
    assert CHOOSE in page.text

    refused = choose(http, page, gamma_id)  # a membership the password did not open
    assert refused.status_code == 401 and "kp_session" not in http.cookies
    tampered = page.text.replace(acme_id, gamma_id)  # the choice token names acme_id
    r = choose(http, tampered, gamma_id)
    assert r.status_code == 401 and "kp_session" not in http.cookies

    with httpx2.Client(base_url=server.url, timeout=10) as other:  # another browser
        found = other.post("/signin/workspace", data={
            "csrf_token": csrf(other.get("/signin").text), "choice": choice_token(page.text),
            "principal_id": acme_id})
        assert found.status_code == 401 and "kp_session" not in other.cookies

    r = choose(http, page, acme_id)
    assert r.status_code == 303 and session_principal(keyplane, http.cookies["kp_session"]) \
        == acme_id


def test_a_password_changed_while_choosing_voids_the_choice(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    beta = make_tenant(keyplane, "Beta")
    acme_id = add_member(http, tenant, EMAIL, PASSWORD_X).json()["id"]
    add_member(http, beta, EMAIL, PASSWORD_X)
    page = sign_in(http, EMAIL, PASSWORD_X)
    r = http.patch(f"/v1/members/{acme_id}", json={"password": PASSWORD_Y},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200
    r = choose(http, page, acme_id)
    assert r.status_code == 401 and "expired" in r.text and "kp_session" not in http.cookies


def test_the_oauth_consent_flow_goes_through_the_workspace_choice(
        http: httpx2.Client, server: RunningServer, tenant: Tenant, keyplane: Keyplane,
        operator_key: str) -> None:
    beta = make_tenant(keyplane, "Beta")
    add_member(http, tenant, EMAIL, PASSWORD_X)
    beta_id = add_member(http, beta, EMAIL, PASSWORD_X).json()["id"]
    partner = approved_app(http, tenant.management_key, operator_key)
    verifier, challenge = pkce()
    url = authorize_url(partner, challenge)
    with httpx2.Client(base_url=server.url, timeout=10) as browser:
        r = browser.get(url)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=")
        page = sign_in(browser, EMAIL, PASSWORD_X, url)
        assert CHOOSE in page.text and url.replace("&", "&amp;") in page.text
        r = choose(browser, page, beta_id, url)
        assert r.status_code == 303 and r.headers["location"] == url
        code = redirect_params(consent(browser, url))["code"]
    r = exchange(http, partner, code, verifier)
    assert r.status_code == 200, r.text
    assert introspect(http, partner, r.json()["access_token"])["sub"] == beta_id


# -- the schema -------------------------------------------------------------------------------

def test_the_principals_table_matches_its_definition(keyplane: Keyplane) -> None:
    with keyplane.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = [d for d in compare_metadata(context, metadata) if "principals" in repr(d)]
    assert diffs == []


def test_the_migration_keeps_members_groups_keys_and_sessions(
        database: tuple[str, str | None]) -> None:
    """0005 rebuilds ``principals`` on SQLite; nothing that references it may be lost."""
    url, schema = database
    engine = make_engine(url, schema=schema)
    try:
        migrate.upgrade(engine, "0004_merge")
        now = "2026-01-01 00:00:00"
        rows = {
            "tenants": dict(id="ten_a", name="Acme", enabled=True, created_at=now,
                            default_expiry_days=90, max_expiry_days=None,
                            allow_non_expiring=False, allowed_ips="[]",
                            require_tls_default=True),
            "principals": dict(id="usr_a", tenant_id="ten_a", kind="member", name="Sam",
                               email=EMAIL, role="admin", password_hash="x", enabled=True,
                               created_at=now),
            "groups": dict(id="grp_a", tenant_id="ten_a", name="sales", description="",
                           scopes="[]", created_at=now),
            "principal_groups": dict(principal_id="usr_a", group_id="grp_a"),
            "api_keys": dict(id="key_a", tenant_id="ten_a", owner_id="usr_a", name="k",
                             description="", prefix="kp", start="abcdefgh", scopes="[]",
                             created_by=None, created_at=now, updated_at=now,
                             allowed_ips="[]", require_tls=True, enabled=True, meta="{}"),
            "web_sessions": dict(id="ses_a", digest="d" * 64, pepper_id="p", principal_id="usr_a",
                                 tenant_id="ten_a", created_at=now, expires_at=now),
        }
        with engine.begin() as conn:
            for table, row in rows.items():
                cols = ", ".join(row)
                conn.execute(sa.text(f"INSERT INTO {table} ({cols}) VALUES "
                                     f"({', '.join(':' + c for c in row)})"), row)
        migrate.upgrade(engine, "0005_email_per_tenant")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT email FROM principals")).scalar_one() == EMAIL
            assert conn.execute(sa.text("SELECT group_id FROM principal_groups")).all() == [
                ("grp_a",)]
            assert conn.execute(sa.text("SELECT owner_id FROM api_keys")).all() == [("usr_a",)]
            assert conn.execute(sa.text("SELECT id FROM web_sessions")).all() == [("ses_a",)]
            if conn.dialect.name == "sqlite":  # foreign keys are enforced again afterwards
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        with engine.begin() as conn:  # the same email in another tenant is now allowed...
            conn.execute(sa.text("INSERT INTO tenants SELECT 'ten_b', name, enabled, "
                                 "created_at, default_expiry_days, max_expiry_days, "
                                 "allow_non_expiring, allowed_ips, require_tls_default "
                                 "FROM tenants WHERE id = 'ten_a'"))
            conn.execute(sa.text(
                "INSERT INTO principals (id, tenant_id, kind, name, email, role, enabled, "
                "created_at) VALUES ('usr_b', 'ten_b', 'member', 'Sam', :e, 'admin', :t, :n)"),
                {"e": EMAIL, "t": True, "n": now})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # ...not twice
            conn.execute(sa.text(
                "INSERT INTO principals (id, tenant_id, kind, name, email, role, enabled, "
                "created_at) VALUES ('usr_c', 'ten_b', 'member', 'Sam', :e, 'admin', :t, :n)"),
                {"e": EMAIL, "t": True, "n": now})
    finally:
        engine.dispose()
