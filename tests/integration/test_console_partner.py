"""Operator staff and partner developers in the console, over real HTTP (the browser walk is in
test_console_partner_browser.py): who sees which page, CSRF on every form, another developer's
ids answer 404, an unapproved app cannot be authorised, and the CLI that creates staff."""

from __future__ import annotations

import re
import time
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import pytest
from typer.testing import CliRunner

from keyplane.bootstrap import Keyplane
from keyplane.core.accounts import AccountKind
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, serving
from tests.integration.console_support import secret_in
from tests.integration.oauth_support import authorize_url, csrf, pkce, sign_in
from tests.smtp_server import MailServer

STAFF_EMAIL = "staff@operator.example"
STAFF_PASSWORD = "operator staff password"
DEV_PASSWORD = "developer password 1"
REDIRECT = "https://partner.example/callback"


def add_staff(kp: Keyplane, email: str = STAFF_EMAIL) -> str:
    return kp.accounts.create(SYSTEM, AccountKind.OPERATOR, {
        "email": email, "password": STAFF_PASSWORD, "name": "Olga"}).id


def invitation(kp: Keyplane, email: str) -> str:
    return kp.accounts.invite(SYSTEM, email).token


def sign_up(http: httpx2.Client, email: str, token: str | None = None) -> httpx2.Response:
    page = http.get("/partners/signup", params={"invitation": token} if token else None)
    assert page.status_code == 200, page.text
    if 'name="password"' not in page.text:  # no form: the page says why
        return page
    data = {"csrf_token": csrf(page.text), "email": email, "name": "Zap Inc",
            "password": DEV_PASSWORD}
    if token:
        data["invitation"] = token
    return http.post("/partners/signup", data=data)


def register_app(http: httpx2.Client, name: str = "Zap",
                 scopes: tuple[str, ...] = ("contacts:write",)) -> str:
    page = http.get("/partners/apps/new")
    assert page.status_code == 200, page.text
    r = http.post("/partners/apps", content=urlencode([
        ("csrf_token", csrf(page.text)), ("name", name), ("homepage", "https://zap.example"),
        ("redirect_uris", REDIRECT), *[("scopes", s) for s in scopes]]),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303, r.text
    found = re.match(r"/partners/apps/(app_[A-Za-z0-9]+)\?done=registered",
                     r.headers["location"])
    assert found, r.headers["location"]
    return found.group(1)


def client_id_of(kp: Keyplane, app_id: str) -> str | None:
    return kp.apps.get(SYSTEM, None, app_id).client_id


def test_operator_staff_sign_in_and_see_operator_pages_only(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant) -> None:
    add_staff(keyplane)
    r = sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/operator"
    assert http.get("/").headers["location"] == "/operator"
    page = http.get("/operator/tenants")
    assert page.status_code == 200
    assert "Acme" in page.text and tenant.id in page.text
    # a tenant's pages do not exist for operator staff, nor do a developer's
    for path in ("/keys", "/members", "/settings", "/partners", "/partners/apps/new"):
        assert http.get(path).status_code == 404, path
    # the session is not a credential of the API: no key was minted for staff
    assert http.get("/v1/tenants").status_code == 401
    assert keyplane.keys.list(SYSTEM, None, operator=True).items == []


def test_staff_create_and_disable_a_tenant_with_csrf_and_confirmation(
        keyplane: Keyplane, http: httpx2.Client) -> None:
    add_staff(keyplane)
    sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    page = http.get("/operator/tenants")
    assert http.post("/operator/tenants", data={"name": "Forged"}).status_code == 400
    r = http.post("/operator/tenants", data={"name": "", "csrf_token": csrf(page.text)})
    assert r.status_code == 400 and 'id="name-error"' in r.text
    r = http.post("/operator/tenants", data={"name": "Globex", "csrf_token": csrf(page.text)})
    assert r.status_code == 303
    created = [t for t in keyplane.tenants.list(SYSTEM, limit=50, cursor=None).items
               if t.name == "Globex"]
    assert len(created) == 1 and "Forged" not in http.get("/operator/tenants").text
    confirm = http.get(f"/operator/tenants/{created[0].id}/disable")
    assert confirm.status_code == 200 and "takes effect at once" in confirm.text
    assert keyplane.tenants.get(SYSTEM, created[0].id).enabled  # asking changed nothing
    r = http.post(f"/operator/tenants/{created[0].id}/disable",
                  data={"csrf_token": csrf(confirm.text)})
    assert r.status_code == 303
    assert not keyplane.tenants.get(SYSTEM, created[0].id).enabled
    audit = keyplane.audit.list(SYSTEM, created[0].id, action="tenant.updated", limit=5,
                                cursor=None).items
    assert audit and audit[0].actor.startswith("account:acc_")


def test_a_member_never_reaches_operator_or_partner_pages(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant) -> None:
    add_staff(keyplane)
    sign_in(http, tenant.admin_email, tenant.admin_password)
    for path in ("/operator", "/operator/tenants", "/operator/apps", "/operator/keys",
                 "/partners", "/partners/apps/new"):
        assert http.get(path).status_code == 404, path
    token = csrf(http.get("/keys").text)
    r = http.post("/operator/tenants", data={"name": "Evil", "csrf_token": token})
    assert r.status_code == 404
    assert [t.name for t in keyplane.tenants.list(SYSTEM, limit=50, cursor=None).items] \
        == ["Acme"]


def test_signed_out_visitors_go_to_sign_in(http: httpx2.Client) -> None:
    for path in ("/operator/apps", "/partners"):
        r = http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=")


def test_partner_signup_is_by_invitation_by_default(keyplane: Keyplane, http: httpx2.Client,
                                                    clock: object) -> None:
    page = http.get("/partners/signup")
    assert "Sign-up is by invitation" in page.text and 'name="password"' not in page.text
    with_form = http.get("/partners/signup",
                         params={"invitation": invitation(keyplane, "x@y.example")})
    r = http.post("/partners/signup", data={"csrf_token": csrf(with_form.text),
                                            "email": "x@y.example", "password": DEV_PASSWORD})
    assert r.status_code == 400 and "by invitation" in r.text
    forged = invitation(keyplane, "dev@zap.example")[:-4] + "AAAA"
    r = sign_up(http, "dev@zap.example", forged)
    assert "not valid or has expired" in unescape(r.text) and 'name="password"' not in r.text
    token = invitation(keyplane, "dev@zap.example")
    r = sign_up(http, "other@zap.example", token)
    assert r.status_code == 400 and "another address" in r.text
    r = sign_up(http, "dev@zap.example", token)
    assert r.status_code == 303 and r.headers["location"] == "/partners/apps/new"
    # the invitation is spent: the account exists
    with httpx2.Client(base_url=str(http.base_url)) as other:
        r = sign_up(other, "dev@zap.example", token)
        assert r.status_code == 409 or "exists already" in r.text


def test_invitations_expire(keyplane: Keyplane, http: httpx2.Client, clock: object) -> None:
    from tests.support import SettableClock

    assert isinstance(clock, SettableClock)
    token = invitation(keyplane, "late@zap.example")
    clock.advance(days=8)
    r = sign_up(http, "late@zap.example", token)
    assert "has expired" in r.text and 'name="password"' not in r.text


def test_a_developer_registers_an_app_that_cannot_be_authorised_before_approval(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant) -> None:
    sign_up(http, "dev@zap.example", invitation(keyplane, "dev@zap.example"))
    # errors beside their field, in plain words
    page = http.get("/partners/apps/new")
    r = http.post("/partners/apps", data={"csrf_token": csrf(page.text), "name": "Zap",
                                          "homepage": "http://zap.example",
                                          "redirect_uris": REDIRECT, "scopes": "contacts:read"})
    assert r.status_code == 400 and 'id="homepage-error"' in r.text and "https" in r.text
    r = http.post("/partners/apps", data={"csrf_token": csrf(page.text), "name": "Zap",
                                          "homepage": "https://zap.example",
                                          "redirect_uris": "https://zap.example/#frag",
                                          "scopes": "contacts:read"})
    assert r.status_code == 400
    assert "Redirect URIs must not contain a fragment" in r.text
    r = http.post("/partners/apps", data={"name": "Zap"})  # no CSRF token
    assert r.status_code == 400
    app_id = register_app(http)
    detail = http.get(f"/partners/apps/{app_id}")
    assert "Pending" in detail.text and "Rotate client secret" not in detail.text
    assert client_id_of(keyplane, app_id) is None  # nothing to start an OAuth flow with
    # the developer holds no management right
    assert http.post(f"/operator/apps/{app_id}/approve",
                     data={"csrf_token": csrf(detail.text)}).status_code == 404
    assert keyplane.apps.get(SYSTEM, None, app_id).status.value == "pending"


def test_another_developers_app_is_not_found(keyplane: Keyplane, tenant: Tenant,
                                             http: httpx2.Client) -> None:
    sign_up(http, "a@zap.example", invitation(keyplane, "a@zap.example"))
    app_id = register_app(http)
    with httpx2.Client(base_url=str(http.base_url)) as other:
        sign_up(other, "b@rival.example", invitation(keyplane, "b@rival.example"))
        assert other.get(f"/partners/apps/{app_id}").status_code == 404
        assert app_id not in other.get("/partners").text
        own = csrf(other.get("/partners").text)
        r = other.post(f"/partners/apps/{app_id}/rotate-secret", data={"csrf_token": own})
        assert r.status_code == 404
    # nor to a tenant's management key
    key = {"Authorization": f"Bearer {tenant.management_key}"}
    assert http.get(f"/v1/apps/{app_id}", headers=key).status_code == 404
    assert app_id not in http.get("/v1/apps", headers=key).text


def test_staff_approve_and_the_developer_gets_the_secret_once(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant) -> None:
    add_staff(keyplane)
    sign_up(http, "dev@zap.example", invitation(keyplane, "dev@zap.example"))
    app_id = register_app(http)
    with httpx2.Client(base_url=str(http.base_url)) as staff:
        sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD)
        listing = staff.get("/operator/apps")
        assert "Zap" in listing.text
        confirm = staff.get(f"/operator/apps/{app_id}/approve")
        assert confirm.status_code == 200 and "Approve" in confirm.text
        assert staff.post(f"/operator/apps/{app_id}/approve", data={}).status_code == 400
        r = staff.post(f"/operator/apps/{app_id}/approve",
                       data={"csrf_token": csrf(confirm.text)})
        assert r.status_code == 303
        shown = staff.get(f"/operator/apps/{app_id}")
        assert "Approved" in shown.text
        assert "_cs" not in re.sub(r"<code>cli_[^<]+</code>", "", shown.text).split("cs_")[0]
    detail = http.get(f"/partners/apps/{app_id}")
    assert "Approved" in detail.text and "Rotate client secret" in detail.text
    r = http.post(f"/partners/apps/{app_id}/rotate-secret",
                  data={"csrf_token": csrf(detail.text), "expire": "now"})
    assert r.status_code == 200
    secret = secret_in(r.text)
    assert "I have stored the client secret" in r.text
    assert secret not in http.get(f"/partners/apps/{app_id}").text
    client_id = client_id_of(keyplane, app_id)
    assert client_id is not None
    # the secret authenticates the client at the token endpoint (a bad code, a good client)
    r = http.post("/oauth/token", data={"grant_type": "authorization_code", "code": "x",
                                        "redirect_uri": REDIRECT, "code_verifier": "v" * 50},
                  auth=(client_id, secret))
    assert r.json()["error"] == "invalid_grant"
    r = http.post("/oauth/token", data={"grant_type": "authorization_code", "code": "x",
                                        "redirect_uri": REDIRECT, "code_verifier": "v" * 50},
                  auth=(client_id, secret[:-1] + ("A" if secret[-1] != "A" else "B")))
    assert r.json()["error"] == "invalid_client"


def test_suspend_and_reject_ask_first_and_take_effect(keyplane: Keyplane,
                                                      http: httpx2.Client) -> None:
    add_staff(keyplane)
    sign_up(http, "dev@zap.example", invitation(keyplane, "dev@zap.example"))
    kept, refused = register_app(http, "Kept"), register_app(http, "Refused")
    with httpx2.Client(base_url=str(http.base_url)) as staff:
        sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD)
        for app_id, action in ((refused, "reject"), (kept, "approve"), (kept, "suspend")):
            confirm = staff.get(f"/operator/apps/{app_id}/{action}")
            assert confirm.status_code == 200
            r = staff.post(f"/operator/apps/{app_id}/{action}", data={
                "csrf_token": csrf(confirm.text), "reason": "Looks unsafe"})
            assert r.status_code == 303, r.text
        assert staff.get(f"/operator/apps/{refused}/approve").status_code == 404
    page = http.get(f"/partners/apps/{refused}")
    assert "Rejected" in page.text and "Looks unsafe" in page.text
    assert "Suspended" in http.get(f"/partners/apps/{kept}").text
    partner = client_id_of(keyplane, kept)
    assert partner is not None
    _verifier, challenge = pkce()
    from tests.integration.oauth_support import Partner

    url = authorize_url(Partner(kept, partner, "", REDIRECT, ["contacts:write"]), challenge)
    r = http.get(url)
    assert r.status_code == 400 and "suspended by the Keyplane operator" in r.text


def test_staff_create_and_revoke_an_operator_key(keyplane: Keyplane, http: httpx2.Client,
                                                 verifier_key: str) -> None:
    add_staff(keyplane)
    sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    page = http.get("/operator/keys")
    r = http.post("/operator/keys", data={"csrf_token": csrf(page.text), "name": "gateway-2",
                                          "scopes": "keys:verify", "require_tls": ""})
    assert r.status_code == 200 and "I have stored my key" in r.text
    secret = secret_in(r.text)
    listing = http.get("/operator/keys").text
    assert "gateway-2" in listing and secret not in listing
    verify = http.post("/v1/verify", headers={"Authorization": f"Bearer {secret}"},
                       json={"key": verifier_key})
    assert verify.status_code == 200
    key_id = next(k.id for k in keyplane.keys.list(SYSTEM, None, operator=True).items
                  if k.name == "gateway-2")
    confirm = http.get(f"/operator/keys/{key_id}/revoke")
    assert "cannot be undone" in confirm.text
    r = http.post(f"/operator/keys/{key_id}/revoke", data={"csrf_token": csrf(confirm.text)})
    assert r.status_code == 303
    verify = http.post("/v1/verify", headers={"Authorization": f"Bearer {secret}"},
                       json={"key": verifier_key})
    assert verify.status_code == 401


def test_the_scope_catalogue_page(keyplane: Keyplane, http: httpx2.Client) -> None:
    add_staff(keyplane)
    sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    page = http.get("/operator/scopes")
    assert page.status_code == 200
    assert "contacts:read" in page.text and "Contacts View" in page.text


def test_sign_out_ends_the_staff_session(keyplane: Keyplane, http: httpx2.Client) -> None:
    add_staff(keyplane)
    sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    token = csrf(http.get("/operator/apps").text)
    r = http.post("/signout", data={"csrf_token": token})
    assert r.status_code == 303
    assert http.get("/operator/apps").status_code == 303


def ask_for_link(http: httpx2.Client, email: str) -> httpx2.Response:
    page = http.get("/partners/signup")
    assert page.status_code == 200 and 'name="password"' not in page.text, page.text
    return http.post("/partners/signup", data={"csrf_token": csrf(page.text), "email": email})


def mailed_link(mail: MailServer, address: str, n: int) -> str:
    mail.inbox.wait(n)
    found = re.search(r"/partners/signup\?invitation=(\S+)",
                      mail.inbox.body(mail.inbox.to(address)[-1]))
    assert found is not None
    return found.group(1)


def _page_of(response: httpx2.Response) -> str:
    """The page, without what differs on every request (its CSRF token)."""
    return re.sub(r'name="csrf_token" value="[^"]*"', "", response.text)


def test_open_signup_proves_the_address_and_never_says_whether_it_has_an_account(
        database: tuple[str, str | None], tmp_path: Path, mail_server: MailServer) -> None:
    url, schema = database
    with serving(url, schema, tmp_path, partner_signup="open",
                 smtp_url=mail_server.url) as (kp, http):
        # no account without a mailed link: the whole form with a forged one is refused
        page = http.get("/partners/signup")
        assert "Email me a sign-up link" in page.text
        r = http.post("/partners/signup", data={
            "csrf_token": csrf(page.text), "email": "mallory@zap.example",
            "password": DEV_PASSWORD, "name": "M", "invitation": "1.bm9wZQ.forged"})
        assert r.status_code == 400 and "not valid or has expired" in unescape(r.text)
        assert kp.accounts.list(SYSTEM, AccountKind.DEVELOPER).items == []

        first = ask_for_link(http, "anyone@zap.example")
        assert first.status_code == 200 and "Check your email" in first.text
        token = mailed_link(mail_server, "anyone@zap.example", 1)
        assert sign_up(http, "anyone@zap.example", token).status_code == 303
        http.cookies.clear()
        # the same address, now with an account: the same answer, and a mail to sign in
        again = ask_for_link(http, "anyone@zap.example")
        assert again.status_code == 200 and _page_of(again) == _page_of(first)
        mail_server.inbox.wait(2)
        note = mail_server.inbox.body(mail_server.inbox.to("anyone@zap.example")[-1])
        assert "has an account already" in note and "invitation=" not in note
        # a link is for its own address only
        assert sign_up(http, "other@zap.example", token).status_code == 400
        assert [a.email for a in kp.accounts.list(SYSTEM, AccountKind.DEVELOPER).items] == [
            "anyone@zap.example"]


def test_closed_signup_makes_no_account(database: tuple[str, str | None],
                                        tmp_path: Path) -> None:
    url, schema = database
    with serving(url, schema, tmp_path, partner_signup="closed") as (kp, http):
        page = http.get("/partners/signup")
        assert "closed" in page.text and 'name="password"' not in page.text
        token = http.cookies.get("kp_csrf")
        assert token is not None
        r = http.post("/partners/signup", data={"csrf_token": kp.ctx.hasher.digest(
                                                    f"csrf:{token}")[:40],
                                                "email": "b@zap.example",
                                                "password": DEV_PASSWORD})
        assert r.status_code == 400
        assert kp.accounts.list(SYSTEM, AccountKind.DEVELOPER).items == []


def test_open_signup_needs_a_mail_server(tmp_path: Path) -> None:
    from pydantic import ValidationError as SettingsError

    from keyplane.config import Settings

    with pytest.raises(SettingsError, match="KEYPLANE_PARTNER_SIGNUP=open needs "
                                            "KEYPLANE_SMTP_URL"):
        Settings(data_dir=tmp_path, partner_signup="open")


def test_cli_creates_operator_staff(keyplane: Keyplane, tmp_path: Path,
                                    database: tuple[str, str | None],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from keyplane.cli.main import app

    url, schema = database
    if schema is not None:
        pytest.skip("the CLI reads KEYPLANE_DATABASE_URL; the SQLite run covers it")
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", url)
    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    r = runner.invoke(app, ["operators", "create", "--email", "ops@operator.example",
                            "--password-stdin", "--json"], input=STAFF_PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert '"kind": "operator"' in r.output and STAFF_PASSWORD not in r.output
    r = runner.invoke(app, ["operators", "create", "--email", "ops@operator.example",
                            "--password-stdin"], input=STAFF_PASSWORD + "\n")
    assert r.exit_code == 1 and "exists already" in r.output
    r = runner.invoke(app, ["operators", "create", "--email", "short@operator.example",
                            "--password-stdin"], input="short\n")
    assert r.exit_code == 1 and "12" in r.output
    found = keyplane.accounts.list(SYSTEM, AccountKind.OPERATOR).items
    assert [a.email for a in found] == ["ops@operator.example"]
    r = runner.invoke(app, ["operators", "list", "--json"])
    assert r.exit_code == 0 and "ops@operator.example" in r.output


def test_disabling_staff_ends_their_sessions(keyplane: Keyplane, http: httpx2.Client) -> None:
    add_staff(keyplane)
    sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    assert http.get("/operator/apps").status_code == 200
    keyplane.accounts.set_enabled(SYSTEM, AccountKind.OPERATOR, STAFF_EMAIL, False)
    assert http.get("/operator/apps").status_code == 303  # back to sign-in
    r = sign_in(http, STAFF_EMAIL, STAFF_PASSWORD)
    assert r.status_code == 401


def test_open_signup_mails_a_few_links_per_address_not_thousands(
        database: tuple[str, str | None], tmp_path: Path, mail_server: MailServer) -> None:
    url, schema = database
    with serving(url, schema, tmp_path, partner_signup="open",
                 smtp_url=mail_server.url) as (_kp, http):
        for _ in range(3):  # one inbox: three links an hour
            assert ask_for_link(http, "victim@zap.example").status_code == 200
        r = ask_for_link(http, "victim@zap.example")
        assert r.status_code == 429 and "Too many sign-up requests" in r.text
        assert int(r.headers["retry-after"]) > 0
        for n in range(2):  # one client address: five an hour, whatever the inbox
            assert ask_for_link(http, f"dev{n}@zap.example").status_code == 200
        r = ask_for_link(http, "dev9@zap.example")
        assert r.status_code == 429
        mail_server.inbox.wait(5)
        time.sleep(0.3)
        assert len(mail_server.inbox.messages) == 5
        assert mail_server.inbox.to("dev9@zap.example") == []
