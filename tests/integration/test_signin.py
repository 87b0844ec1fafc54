"""Member sign-in on the real server: session cookies, CSRF, throttling, sign-out, expiry, who
may sign in, and where a successful sign-in may send the browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane, build
from keyplane.core import ids
from keyplane.core.model import Principal, PrincipalKind, Role
from keyplane.core.rights import SYSTEM
from keyplane.services.passwords import hash_password
from keyplane.web.app import create_app
from tests.conftest import Tenant, auth, make_settings, make_tenant
from tests.integration.oauth_support import csrf, sign_in
from tests.support import RunningServer, SettableClock, start_server

PASSWORD_B = "second admin password"


@pytest.fixture
def keyplane(database: tuple[str, str | None], tmp_path: Path,
             clock: SettableClock) -> Iterator[Keyplane]:
    """Keyplane behind a trusted proxy on loopback (so X-Forwarded-Proto can say https), with
    small sign-in limits."""
    url, schema = database
    settings = make_settings(tmp_path, url, trusted_proxies=["127.0.0.1/32"],
                             signin_limit_per_account="3/15 minutes",
                             signin_limit_per_ip="6/15 minutes")
    kp = build(settings, clock=clock, schema=schema, migrate_db=True)
    kp.start()
    try:
        yield kp
    finally:
        kp.close()


@pytest.fixture
def server(keyplane: Keyplane) -> Iterator[RunningServer]:
    running = start_server(create_app(keyplane, manage_lifecycle=False), proxy_headers=False)
    try:
        yield running
    finally:
        running.stop()


def session_cookie(response: httpx2.Response) -> str:
    header = response.headers.get("set-cookie", "")
    assert "session=" in header, header
    return header


def test_signin_sets_an_httponly_samesite_session_cookie(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    r = sign_in(http, tenant.admin_email, tenant.admin_password)
    assert r.status_code == 303 and r.headers["location"] == "/"  # the console
    header = session_cookie(r)
    assert header.startswith("kp_session=")
    attributes = [a.strip().lower() for a in header.split(";")]
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    raw = http.cookies["kp_session"]
    with keyplane.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM web_sessions")).all()
    assert len(rows) == 1 and raw not in " ".join(map(str, rows[0]))
    page = http.get("/signin")
    assert page.status_code == 200 and "You are signed in" in page.text and "Acme" in page.text


def test_over_tls_the_cookie_is_secure_and_host_bound(http: httpx2.Client,
                                                      tenant: Tenant) -> None:
    tls = {"X-Forwarded-Proto": "https"}
    page = http.get("/signin", headers=tls)
    set_cookie = page.headers["set-cookie"]
    assert set_cookie.startswith("__Host-kp_csrf=") and "secure" in set_cookie.lower()
    # the client speaks plain HTTP to the "proxy", so it keeps Secure cookies to itself:
    binding = set_cookie.split(";")[0]
    r = http.post("/signin", headers={**tls, "Cookie": binding}, data={
        "email": tenant.admin_email, "password": tenant.admin_password,
        "csrf_token": csrf(page.text), "next": ""})
    assert r.status_code == 303, r.text
    attributes = [a.strip().lower() for a in session_cookie(r).split(";")]
    assert attributes[0].startswith("__host-kp_session=")
    assert "secure" in attributes and "httponly" in attributes and "samesite=lax" in attributes


def test_wrong_password_and_unknown_email_look_the_same(http: httpx2.Client,
                                                        tenant: Tenant) -> None:
    wrong = sign_in(http, tenant.admin_email, "not the password at all")
    unknown = sign_in(http, "nobody@example.com", "not the password at all")
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert "The email or password is not right." in r.text
        assert "set-cookie" not in r.headers or "kp_session" not in r.headers["set-cookie"]


def test_signin_form_needs_its_csrf_token(http: httpx2.Client, tenant: Tenant,
                                          server: RunningServer) -> None:
    r = http.post("/signin", data={"email": tenant.admin_email,
                                   "password": tenant.admin_password})
    assert r.status_code == 400 and "kp_session" not in r.headers.get("set-cookie", "")
    with httpx2.Client(base_url=server.url) as other:  # another browser's token
        token = csrf(other.get("/signin").text)
    http.get("/signin")
    r = http.post("/signin", data={"email": tenant.admin_email,
                                   "password": tenant.admin_password, "csrf_token": token})
    assert r.status_code == 400 and "expired" in r.text


def test_failed_signins_are_throttled_per_account_and_per_ip(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    second = make_tenant(keyplane, "Beta", email="b@example.com")
    third = make_tenant(keyplane, "Gamma", email="c@example.com")
    for _ in range(3):
        assert sign_in(http, tenant.admin_email, "wrong password!!").status_code == 401
    blocked = sign_in(http, tenant.admin_email, tenant.admin_password)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in blocked.text
    # another account from the same address is not locked by the first one's failures
    ok = sign_in(http, second.admin_email, second.admin_password)
    assert ok.status_code == 303
    http.cookies.clear()
    for _ in range(3):
        assert sign_in(http, second.admin_email, "wrong password!!").status_code == 401
    # six failures from this address: every account is refused from here for a while
    assert sign_in(http, third.admin_email, third.admin_password).status_code == 429
    events = http.get("/v1/audit-events", params={"action": "session.signin_failed"},
                      headers=auth(tenant.management_key)).json()["items"]
    assert len(events) == 3 and all(e["outcome"] == "failure" for e in events)
    assert "wrong password" not in str(events)


def test_signout_ends_the_session(http: httpx2.Client, tenant: Tenant) -> None:
    sign_in(http, tenant.admin_email, tenant.admin_password)
    cookie = http.cookies["kp_session"]
    page = http.get("/signin")
    r = http.post("/signout", data={"csrf_token": "forged"})
    assert r.status_code == 400
    r = http.post("/signout", data={"csrf_token": csrf(page.text)})
    assert r.status_code == 303
    assert "kp_session" not in http.cookies
    http.cookies.set("kp_session", cookie)  # replaying the old cookie does not sign in
    assert "Sign in to Keyplane" in http.get("/signin").text


def test_sessions_expire(http: httpx2.Client, tenant: Tenant, clock: SettableClock,
                         keyplane: Keyplane) -> None:
    sign_in(http, tenant.admin_email, tenant.admin_password)
    clock.advance(seconds=keyplane.settings.session_lifetime_seconds - 1)
    assert "You are signed in" in http.get("/signin").text
    clock.advance(seconds=1)
    assert "Sign in to Keyplane" in http.get("/signin").text


def test_service_accounts_and_disabled_members_never_sign_in(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane,
        clock: SettableClock) -> None:
    with keyplane.ctx.uow() as uow:  # even one that somehow has an email and a password
        uow.principals.add(Principal(
            id=ids.new_id("svc"), tenant_id=tenant.id, kind=PrincipalKind.SERVICE_ACCOUNT,
            name="API - Zapier", role=Role.ADMIN, created_at=clock.now(),
            email="svc@example.com", password_hash=hash_password("service password 1")))
        uow.commit()
    assert sign_in(http, "svc@example.com", "service password 1").status_code == 401

    member = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {
        "email": "m@example.com", "role": "member", "password": "member password 1"})
    assert sign_in(http, "m@example.com", "member password 1").status_code == 303
    assert "You are signed in" in http.get("/signin").text
    r = http.patch(f"/v1/members/{member.id}", json={"enabled": False},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200
    assert "Sign in to Keyplane" in http.get("/signin").text  # the live session ended too
    http.cookies.clear()
    assert sign_in(http, "m@example.com", "member password 1").status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x",
                                    "/\\evil.example", "javascript:alert(1)"])
def test_after_signin_the_browser_stays_on_this_site(http: httpx2.Client, tenant: Tenant,
                                                     target: str) -> None:
    r = sign_in(http, tenant.admin_email, tenant.admin_password, target)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_after_signin_the_browser_returns_to_the_authorization_request(
        http: httpx2.Client, tenant: Tenant) -> None:
    target = "/oauth/authorize?client_id=x&state=1"
    r = sign_in(http, tenant.admin_email, tenant.admin_password, target)
    assert r.status_code == 303 and r.headers["location"] == target


@pytest.mark.redis
def test_the_signin_throttle_is_shared_by_workers_through_redis(keyplane: Keyplane) -> None:
    import secrets

    from keyplane.cache.ratelimit import AttemptCounts, LimitStore
    from keyplane.core.attempts import Limit
    from keyplane.services.throttle import FailureThrottle
    from tests.support import REDIS_URL

    prefix = "kptest-" + secrets.token_hex(4)
    stores = [LimitStore(REDIS_URL, prefix=prefix) for _ in range(2)]
    one, two = (FailureThrottle(keyplane.ctx, AttemptCounts(store), limit=20, window=60,
                                signin_per_account=Limit(2, 60),
                                signin_per_address=Limit(10, 60)) for store in stores)
    try:
        one.signin_failed("a@example.com", "10.0.0.1")
        assert two.signin_refused("a@example.com", "10.0.0.1") is None
        two.signin_failed("a@example.com", "10.0.0.2")
        for throttle in (one, two):  # two failures, counted by two "workers"
            hit = throttle.signin_refused("a@example.com", "10.0.0.3")
            assert hit is not None and 0 < hit[0] <= 61 and hit[1] == 2
        assert one.signin_refused("b@example.com", "10.0.0.1") is None
    finally:
        assert stores[0].shared is not None
        stores[0].shared.storage.reset()
        for store in stores:
            store.close()


def test_an_unreachable_throttle_store_still_counts_but_locks_nobody_else_out(
        keyplane: Keyplane) -> None:
    """Redis down: failures are counted in this process (never failing open for password
    guessing), and other accounts from other addresses sign in as usual."""
    from keyplane.cache.ratelimit import AttemptCounts, LimitStore
    from keyplane.core.attempts import Limit
    from keyplane.services.throttle import FailureThrottle
    from tests.support import free_port

    store = LimitStore(f"redis://127.0.0.1:{free_port()}/0", prefix="p", timeout=0.2)
    throttle = FailureThrottle(keyplane.ctx, AttemptCounts(store), limit=20, window=60,
                               signin_per_account=Limit(1, 60), signin_per_address=Limit(5, 60))
    try:
        throttle.signin_failed("a@example.com", "10.0.0.1")  # logged, not raised
        hit = throttle.signin_refused("a@example.com", "10.0.0.1")
        assert hit is not None and hit[1] == 1
        assert throttle.signin_refused("b@example.com", "10.0.0.2") is None
        assert store.mode == "memory"
    finally:
        store.close()
