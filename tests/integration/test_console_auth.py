"""Signing in to the console, beyond the password, over plain HTTP (a cookie-keeping client) with
a real SMTP server (aiosmtpd) and the test's clock: invitations, password resets, TOTP
two-factor with recovery codes, the tenant policy "admins must use two-factor", and the fresh
second factor asked before consenting to an app or creating a key with admin rights. The
browser walk is in test_console_auth_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import httpx2
import pyotp
import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.console_support import MEMBER_PASSWORD, add_member, form_token, signed_in
from tests.integration.oauth_support import approved_app, authorize_url, csrf, pkce, sign_in
from tests.smtp_server import Inbox, MailServer
from tests.support import SettableClock

LINK = re.compile(r"https?://[^\s]+/(join|reset)/([A-Za-z0-9_-]{40,})")
NEW_PASSWORD = "a brand new passphrase"


@dataclass
class Site:
    kp: Keyplane
    http: httpx2.Client
    mail: MailServer
    clock: SettableClock
    tenant: Tenant

    def client(self) -> httpx2.Client:
        return httpx2.Client(base_url=str(self.http.base_url), timeout=10)


@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path, mail_server: MailServer,
         clock: SettableClock) -> Iterator[Site]:
    url, schema = database
    with serving(url, schema, tmp_path, clock=clock, smtp_url=mail_server.url) as (kp, http):
        yield Site(kp, http, mail_server, clock, make_tenant(kp))


def path_of(text: str) -> str:
    found = LINK.search(unescape(text))
    assert found, "no one-time link in the text"
    return f"/{found.group(1)}/{found.group(2)}"


def shown_link(html: str) -> str:
    found = re.search(r'<code id="one-time-link">([^<]+)</code>', html)
    assert found, "no link shown to the admin"
    return path_of(found.group(1))


def actions(kp: Keyplane) -> list[str]:
    from keyplane.storage.sql.tables import audit_events

    with kp.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(audit_events.c.action)
                                           .order_by(audit_events.c.at))]


def all_rows(kp: Keyplane, table: str) -> str:
    with kp.engine.connect() as conn:
        return repr([tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))])


def invite(http: httpx2.Client, email: str, role: str = "member") -> httpx2.Response:
    return http.post("/invitations", data={"csrf_token": form_token(http, "/invitations/new"),
                                           "email": email, "role": role})


def set_password(http: httpx2.Client, path: str, password: str,
                 name: str = "") -> httpx2.Response:
    page = http.get(path)
    assert page.status_code == 200, page.text
    return http.post(path, data={"csrf_token": csrf(page.text), "password": password,
                                 "name": name})


# -- invitations ------------------------------------------------------------------------------

def test_an_invitation_is_mailed_shown_used_once_and_then_refused(site: Site) -> None:
    signed_in(site.http, site.tenant.admin_email, site.tenant.admin_password)
    made = invite(site.http, "New.Person@Example.com", "read_only")
    assert made.status_code == 200, made.text
    assert "We emailed it to new.person@example.com" in made.text
    path = shown_link(made.text)
    mail = site.mail.inbox.wait(1)[0]
    assert "new.person@example.com" in str(mail["To"])
    assert path_of(Inbox.body(mail)) == path  # the same link, mailed and shown
    token = path.rsplit("/", 1)[1]
    assert token not in all_rows(site.kp, "one_time_links")  # only its digest is stored

    members = site.http.get("/members")
    assert "Invitations waiting" in members.text and "new.person@example.com" in members.text

    with site.client() as invitee:
        page = invitee.get(path)
        assert page.status_code == 200
        assert "You are invited to Acme as read only" in page.text
        short = set_password(invitee, path, "short")
        assert short.status_code == 422
        assert "at least 12 characters" in short.text
        done = set_password(invitee, path, NEW_PASSWORD, name="New Person")
        assert done.status_code == 303 and done.headers["location"] == "/signin?done=joined"
        assert sign_in(invitee, "new.person@example.com", NEW_PASSWORD).status_code == 303
        me = invitee.get("/members")
        assert "New Person" in me.text and "Only an administrator can change them" in me.text
        assert invitee.get("/invitations/new").status_code == 403  # read only: no inviting
        again = invitee.get(path)
        assert again.status_code == 404 and "This link no longer works" in again.text
    assert "invitation.created" in actions(site.kp)
    assert "invitation.accepted" in actions(site.kp)
    assert "Invitations waiting" not in site.http.get("/members").text  # used: no longer listed


def test_a_used_link_cannot_be_posted_again_and_an_expired_one_says_so(site: Site) -> None:
    signed_in(site.http, site.tenant.admin_email, site.tenant.admin_password)
    first = shown_link(invite(site.http, "once@example.com").text)
    with site.client() as invitee:
        page = invitee.get(first)
        token = csrf(page.text)
        ok = invitee.post(first, data={"csrf_token": token, "password": NEW_PASSWORD})
        assert ok.status_code == 303
        replay = invitee.post(first, data={"csrf_token": token, "password": "another password!"})
        assert replay.status_code == 404
        assert sign_in(invitee, "once@example.com", "another password!").status_code == 401

    late = shown_link(invite(site.http, "late@example.com").text)
    site.clock.advance(hours=73)
    with site.client() as invitee:
        gone = invitee.get(late)
        assert gone.status_code == 404
        assert "This link has expired or was already used" in gone.text


def test_an_invitation_can_be_withdrawn_and_others_cannot_touch_it(site: Site) -> None:
    signed_in(site.http, site.tenant.admin_email, site.tenant.admin_password)
    path = shown_link(invite(site.http, "maybe@example.com").text)
    link_id = re.search(r'action="/invitations/([^/"]+)/withdraw"',
                        site.http.get("/members").text)
    assert link_id
    # another tenant's admin: the invitation does not exist for them
    other = make_tenant(site.kp, "Globex")
    with site.client() as stranger:
        signed_in(stranger, other.admin_email, other.admin_password)
        r = stranger.post(f"/invitations/{link_id.group(1)}/withdraw",
                          data={"csrf_token": form_token(stranger, "/members")})
        assert r.status_code == 404
        assert "maybe@example.com" not in stranger.get("/members").text
    # a member (not an admin) can neither invite nor withdraw
    add_member(site.kp, site.tenant.id, "plain@example.com")
    with site.client() as member:
        signed_in(member, "plain@example.com", MEMBER_PASSWORD)
        assert member.get("/invitations/new").status_code == 403
        r = member.post("/invitations", data={"csrf_token": form_token(member, "/members"),
                                              "email": "x@example.com", "role": "admin"})
        assert r.status_code == 403
        r = member.post(f"/invitations/{link_id.group(1)}/withdraw",
                        data={"csrf_token": form_token(member, "/members")})
        assert r.status_code == 403
    with site.client() as invitee:
        assert invitee.get(path).status_code == 200  # still usable
    r = site.http.post(f"/invitations/{link_id.group(1)}/withdraw",
                       data={"csrf_token": form_token(site.http, "/members")})
    assert r.status_code == 303
    assert "Withdrawn" in site.http.get(r.headers["location"]).text
    with site.client() as invitee:
        assert invitee.get(path).status_code == 404
    assert "invitation.withdrawn" in actions(site.kp)


def test_inviting_an_existing_member_is_refused_beside_the_email(site: Site) -> None:
    signed_in(site.http, site.tenant.admin_email, site.tenant.admin_password)
    r = invite(site.http, site.tenant.admin_email)
    assert r.status_code == 409
    assert "Someone with this email is already a member." in r.text
    r = invite(site.http, "not an email")
    assert r.status_code == 422 and "Enter an email address" in r.text


def test_without_a_mail_server_the_link_is_only_shown(database: tuple[str, str | None],
                                                      tmp_path: Path) -> None:
    url, schema = database
    with serving(url, schema, tmp_path) as (kp, http):
        tenant = make_tenant(kp)
        signed_in(http, tenant.admin_email, tenant.admin_password)
        made = invite(http, "quiet@example.com")
        assert made.status_code == 200
        assert "Email is not set up for this Keyplane, so nothing was sent" in made.text
        with httpx2.Client(base_url=str(http.base_url), timeout=10) as invitee:
            assert invitee.get(shown_link(made.text)).status_code == 200


# -- password reset -----------------------------------------------------------------------------

def forgot(http: httpx2.Client, email: str) -> httpx2.Response:
    page = http.get("/signin/forgot")
    assert page.status_code == 200
    return http.post("/signin/forgot", data={"csrf_token": csrf(page.text), "email": email})


def test_forgot_password_mails_a_link_that_ends_sessions_and_answers_alike(site: Site) -> None:
    add_member(site.kp, site.tenant.id, "pat@example.com")
    with site.client() as old_browser, site.client() as visitor:
        signed_in(old_browser, "pat@example.com", MEMBER_PASSWORD)
        assert old_browser.get("/keys").status_code == 200
        unknown = forgot(visitor, "nobody@example.com")
        known = forgot(visitor, "pat@example.com")
        assert unknown.status_code == known.status_code == 200
        assert "If that address has a Keyplane account" in known.text
        strip = re.compile(r'value="[^"]*"')  # the CSRF token and the typed address differ
        assert strip.sub("", unknown.text) == strip.sub("", known.text)
        mails = site.mail.inbox.wait(1)
        assert len(mails) == 1 and "pat@example.com" in str(mails[0]["To"])  # none to nobody@
        path = path_of(Inbox.body(mails[0]))
        assert path.startswith("/reset/")
        done = set_password(visitor, path, NEW_PASSWORD)
        assert done.status_code == 303 and done.headers["location"] == "/signin?done=reset"
        # the session from before the reset has ended
        assert old_browser.get("/keys").status_code == 303
        assert sign_in(visitor, "pat@example.com", MEMBER_PASSWORD).status_code == 401
        assert sign_in(visitor, "pat@example.com", NEW_PASSWORD).status_code == 303
        assert visitor.get(path).status_code == 404  # once only
    assert "member.password_reset" in actions(site.kp)


def test_forgot_password_is_rate_limited_per_address(site: Site) -> None:
    with site.client() as visitor:
        for _ in range(3):
            assert forgot(visitor, "someone@example.com").status_code == 200
        r = forgot(visitor, "someone@example.com")
        assert r.status_code == 429 and "Too many reset requests" in r.text
        assert "retry-after" in r.headers


def test_a_reset_link_expires(site: Site) -> None:
    add_member(site.kp, site.tenant.id, "slow@example.com")
    with site.client() as visitor:
        forgot(visitor, "slow@example.com")
        path = path_of(Inbox.body(site.mail.inbox.wait(1)[0]))
        site.clock.advance(minutes=61)
        r = visitor.get(path)
        assert r.status_code == 404 and "This link has expired" in r.text


def test_an_admin_makes_a_reset_link_for_a_member(site: Site) -> None:
    member_id = add_member(site.kp, site.tenant.id, "forgetful@example.com")
    signed_in(site.http, site.tenant.admin_email, site.tenant.admin_password)
    r = site.http.post(f"/members/{member_id}/reset-link",
                       data={"csrf_token": form_token(site.http, f"/members/{member_id}")})
    assert r.status_code == 200, r.text
    path = shown_link(r.text)
    assert path_of(Inbox.body(site.mail.inbox.wait(1)[0])) == path
    with site.client() as member:
        assert set_password(member, path, NEW_PASSWORD).status_code == 303
        assert sign_in(member, "forgetful@example.com", NEW_PASSWORD).status_code == 303
    other = make_tenant(site.kp, "Globex")
    with site.client() as stranger:
        signed_in(stranger, other.admin_email, other.admin_password)
        r = stranger.post(f"/members/{member_id}/reset-link",
                          data={"csrf_token": form_token(stranger, "/members")})
        assert r.status_code == 404


# -- two-factor ---------------------------------------------------------------------------------

def enrol(http: httpx2.Client, clock: SettableClock) -> tuple[pyotp.TOTP, list[str]]:
    """Set up TOTP for the signed-in person; the authenticator and the recovery codes."""
    page = http.post("/account/two-factor/start",
                     data={"csrf_token": form_token(http, "/account/two-factor")})
    assert page.status_code == 200, page.text
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page.text)
    assert secret, "no setup key shown"
    assert "otpauth://totp/" in page.text
    totp = pyotp.TOTP(secret.group(1))
    wrong = http.post("/account/two-factor/confirm",
                      data={"csrf_token": csrf(page.text), "code": "000000"
                            if totp.at(clock.now()) != "000000" else "111111"})
    assert wrong.status_code == 422 and "That code is not right" in wrong.text
    done = http.post("/account/two-factor/confirm",
                     data={"csrf_token": csrf(page.text), "code": totp.at(clock.now())})
    assert done.status_code == 200, done.text
    codes = re.findall(r"<li><code>([0-9a-f]{6}-[0-9a-f]{6})</code></li>", done.text)
    assert len(codes) == 10
    return totp, codes


def password_step(http: httpx2.Client, email: str, password: str) -> httpx2.Response:
    r = sign_in(http, email, password)
    assert r.status_code == 200 and "Enter your sign-in code" in r.text, r.text
    return r


def code_step(http: httpx2.Client, page: httpx2.Response, code: str) -> httpx2.Response:
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token
    return http.post("/signin/code", data={"csrf_token": csrf(page.text), "code": code,
                                           "token": unescape(token.group(1)),
                                           "workspace": "Acme"})


def test_totp_enrolment_sign_in_recovery_codes_and_turning_it_off(site: Site) -> None:
    t = site.tenant
    signed_in(site.http, t.admin_email, t.admin_password)
    totp, codes = enrol(site.http, site.clock)
    sealed = all_rows(site.kp, "second_factors")
    assert totp.secret not in sealed and codes[0] not in sealed  # sealed, and digests only
    site.clock.advance(seconds=30)

    with site.client() as browser:
        browser.cookies.set("kp_session", "planted-by-an-attacker-0123456789", domain="127.0.0.1")
        page = password_step(browser, t.admin_email, t.admin_password)
        assert browser.get("/keys").status_code == 303  # no session before the code
        bad = code_step(browser, page, "123456" if totp.at(site.clock.now()) != "123456"
                        else "654321")
        assert bad.status_code == 401 and "That code is not right" in bad.text
        ok = code_step(browser, page, totp.at(site.clock.now()))
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        session = browser.cookies.get("kp_session")
        assert session and session != "planted-by-an-attacker-0123456789"
        assert browser.get("/keys").status_code == 200
    with site.client() as replay:  # the same code, the same 30 seconds: refused
        page = password_step(replay, t.admin_email, t.admin_password)
        assert code_step(replay, page, totp.at(site.clock.now())).status_code == 401
        ok = code_step(replay, page, codes[0])  # a recovery code instead
        assert ok.status_code == 303
    with site.client() as again:  # a recovery code works once
        page = password_step(again, t.admin_email, t.admin_password)
        assert code_step(again, page, codes[0]).status_code == 401
    assert "member.recovery_code_used" in actions(site.kp)
    assert "session.second_factor_failed" in actions(site.kp)

    page = site.http.get("/account/two-factor")
    assert "9 recovery codes left" in page.text
    r = site.http.post("/account/two-factor/disable", data={"csrf_token": csrf(page.text)})
    assert r.status_code == 422
    site.clock.advance(seconds=30)
    r = site.http.post("/account/two-factor/disable",
                       data={"csrf_token": csrf(page.text), "code": totp.at(site.clock.now())})
    assert r.status_code == 303
    with site.client() as plain:
        assert sign_in(plain, t.admin_email, t.admin_password).status_code == 303
    assert "member.two_factor_disabled" in actions(site.kp)


def test_wrong_codes_are_throttled(site: Site) -> None:
    t = site.tenant
    signed_in(site.http, t.admin_email, t.admin_password)
    totp, _codes = enrol(site.http, site.clock)
    site.clock.advance(seconds=30)
    good = totp.at(site.clock.now())
    wrong = "000000" if good != "000000" else "111111"
    with site.client() as guesser:
        page = password_step(guesser, t.admin_email, t.admin_password)
        statuses = [code_step(guesser, page, wrong).status_code for _ in range(6)]
        assert statuses[:5] == [401] * 5 and statuses[5] == 429
        blocked = code_step(guesser, page, good)
        assert blocked.status_code == 429 and "Too many wrong codes" in blocked.text


def test_admins_must_use_two_factor_when_the_tenant_says_so(site: Site) -> None:
    t = site.tenant
    add_member(site.kp, t.id, "mo@example.com")
    signed_in(site.http, t.admin_email, t.admin_password)
    page = site.http.get("/settings")
    assert "Admins must use two-factor sign-in" in page.text
    data = {"csrf_token": csrf(page.text), "default_expiry_days": "90",
            "max_expiry_days": "365", "require_tls_default": "on",
            "leaked_key_action": "revoke", "allowed_ips": "", "revoke_unused_after_days": "",
            "require_admin_two_factor": "on"}
    r = site.http.post("/settings", data=data)
    assert r.status_code == 303, r.text
    api = site.http.get(f"/v1/tenants/{t.id}", headers=auth(t.management_key))
    assert api.json()["policy"]["require_admin_two_factor"] is True
    # the admin is sent to set it up before anything else
    r = site.http.get("/keys")
    assert r.status_code == 303 and r.headers["location"] == "/account/two-factor?required=1"
    page = site.http.get(r.headers["location"])
    assert "Acme requires admins to use two-factor sign-in" in page.text
    # a member is not an admin: the policy does not stop them
    with site.client() as member:
        signed_in(member, "mo@example.com", MEMBER_PASSWORD)
        assert member.get("/keys").status_code == 200
    enrol(site.http, site.clock)
    assert site.http.get("/keys").status_code == 200
    page = site.http.get("/account/two-factor")
    assert "so it cannot be turned off" in page.text
    r = site.http.post("/account/two-factor/disable",
                       data={"csrf_token": csrf(page.text), "code": "123456"})
    assert r.status_code == 409
    # and through the API, the policy is off again
    r = site.http.patch(f"/v1/tenants/{t.id}", headers=auth(t.management_key),
                        json={"policy": {"require_admin_two_factor": False}})
    assert r.status_code == 200 and r.json()["policy"]["require_admin_two_factor"] is False


# -- a fresh second factor ----------------------------------------------------------------------

def test_a_key_with_admin_rights_asks_for_a_fresh_code(site: Site) -> None:
    t = site.tenant
    signed_in(site.http, t.admin_email, t.admin_password)
    totp, _codes = enrol(site.http, site.clock)
    site.clock.advance(minutes=6)  # the code typed at enrolment is no longer fresh

    def create(scopes: list[str], code: str | None = None) -> httpx2.Response:
        data: dict[str, str | list[str]] = {
            "csrf_token": form_token(site.http, "/keys/new"), "name": "Ops", "description": "",
            "expires_in_days": "90", "allowed_ips": "", "require_tls": "on", "scopes": scopes}
        if code is not None:
            data["second_factor_code"] = code
        return site.http.post("/keys", data=data)

    assert "Authentication code" in site.http.get("/keys/new").text
    plain = create(["contacts:read"])
    assert plain.status_code == 200 and "Your new API key" in plain.text  # no admin rights
    asked = create(["keys:write"])
    assert asked.status_code == 401 and "needs a fresh second factor" in asked.text
    made = create(["keys:write"], totp.at(site.clock.now()))
    assert made.status_code == 200 and "Your new API key" in made.text
    # fresh for a few minutes: no code needed again
    assert create(["members:read"]).status_code == 200
    site.clock.advance(minutes=6)
    assert create(["members:read"]).status_code == 401


def test_consenting_to_an_app_asks_for_a_fresh_code(site: Site) -> None:
    t = site.tenant
    operator = site.kp.keys.create(
        SYSTEM, None,
        {"name": "platform", "scopes": ["platform:write"], "require_tls": False},
        operator=True).secret
    partner = approved_app(site.http, t.management_key, operator)
    signed_in(site.http, t.admin_email, t.admin_password)
    totp, _codes = enrol(site.http, site.clock)
    site.clock.advance(minutes=6)
    _verifier, challenge = pkce()
    url = authorize_url(partner, challenge, scope="contacts:read")
    page = site.http.get(url)
    assert page.status_code == 200 and "Authentication code" in page.text
    base = {"csrf_token": csrf(page.text), "decision": "allow", "scope": "contacts:read"}
    r = site.http.post(url, data=base)
    assert r.status_code == 401 and "needs a fresh second factor" in r.text
    r = site.http.post(url, data={**base, "second_factor_code": totp.at(site.clock.now())})
    assert r.status_code == 302 and "code=" in r.headers["location"]


def test_choosing_a_workspace_still_asks_for_the_code_of_that_membership(site: Site) -> None:
    t = site.tenant
    make_tenant(site.kp, "Globex", email=t.admin_email)  # the same person, the same password
    with site.client() as browser:
        page = password_step_or_choice(browser, t.admin_email, t.admin_password)
        assert "Choose a workspace" in page.text  # no two-factor yet: a plain choice
    signed_in_acme = site.client()
    with signed_in_acme:
        page = password_step_or_choice(signed_in_acme, t.admin_email, t.admin_password)
        choose = choice_of(signed_in_acme, page, t.admin_id)
        assert choose.status_code == 303
        totp, _codes = enrol(signed_in_acme, site.clock)
    site.clock.advance(seconds=30)
    with site.client() as browser:
        page = password_step_or_choice(browser, t.admin_email, t.admin_password)
        code_page = choice_of(browser, page, t.admin_id)
        assert code_page.status_code == 200 and "Enter your sign-in code" in code_page.text
        assert browser.get("/keys").status_code == 303
        assert code_step(browser, code_page, totp.at(site.clock.now())).status_code == 303
        assert browser.get("/keys").status_code == 200


def password_step_or_choice(http: httpx2.Client, email: str, password: str) -> httpx2.Response:
    r = sign_in(http, email, password)
    assert r.status_code == 200, r.text
    return r


def choice_of(http: httpx2.Client, page: httpx2.Response, principal_id: str) -> httpx2.Response:
    choice = re.search(r'name="choice" value="([^"]+)"', page.text)
    assert choice, "no workspace choice"
    return http.post("/signin/workspace", data={
        "csrf_token": csrf(page.text), "choice": unescape(choice.group(1)),
        "principal_id": principal_id, "next": ""})


def test_one_time_link_tokens_never_reach_the_logs(
        site: Site, all_logs: pytest.LogCaptureFixture) -> None:
    signed_in(site.http, site.tenant.admin_email, site.tenant.admin_password)
    path = shown_link(invite(site.http, "logged@example.com").text)
    with site.client() as invitee:
        assert set_password(invitee, path, NEW_PASSWORD).status_code == 303
        forgot(invitee, "logged@example.com")
        reset = path_of(Inbox.body(site.mail.inbox.wait(2)[1]))
        assert set_password(invitee, reset, "yet another passphrase").status_code == 303
    logged = "\n".join(r.getMessage() for r in all_logs.records  # Keyplane's and uvicorn's
                       if r.name.startswith(("keyplane", "uvicorn")))
    for token in (path.rsplit("/", 1)[1], reset.rsplit("/", 1)[1]):
        assert token not in logged
    assert "/join/[redacted]" in logged and "/reset/[redacted]" in logged  # the access log
