"""The OAuth 2.0 Security BCP (RFC 9700) musts, each as a failing path against the real server
on SQLite and PostgreSQL: redirect URIs, PKCE, codes, refresh tokens, client authentication,
app status, who may consent, scopes, metadata, revocation and introspection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth
from tests.integration.oauth_support import (
    Partner,
    approved_app,
    authorize_url,
    consent,
    csrf,
    exchange,
    get_code,
    introspect,
    pkce,
    redirect_params,
    refresh,
    sign_in,
)
from tests.support import RunningServer, SettableClock, typo

INACTIVE = {"active": False}


@pytest.fixture
def partner(http: httpx2.Client, tenant: Tenant, operator_key: str) -> Partner:
    return approved_app(http, tenant.management_key, operator_key)


@pytest.fixture
def browser(server: RunningServer) -> Iterator[httpx2.Client]:
    """A second cookie jar: the admin's browser, apart from the client's HTTP calls."""
    with httpx2.Client(base_url=server.url, timeout=10) as client:
        yield client


def tokens_for(http: httpx2.Client, browser: httpx2.Client, partner: Partner,
               tenant: Tenant) -> dict[str, Any]:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    r = exchange(http, partner, code, verifier)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def verify(http: httpx2.Client, verifier_key: str, token: str, **extra: Any) -> dict[str, Any]:
    r = http.post("/v1/verify", json={"key": token, "tls": True, **extra},
                  headers=auth(verifier_key))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def is_error_page(r: httpx2.Response) -> bool:
    return (r.status_code == 400 and "location" not in r.headers
            and r.headers["content-type"].startswith("text/html")
            and "cannot continue" in r.text)


# -- redirect URIs (RFC 9700 §2.1, RFC 6749 §4.1.2.1) --------------------------------------------

@pytest.mark.parametrize("variant", [
    "https://app.example/cb/",
    "https://app.example/CB",
    "https://app.example/cb?extra=1",
    "https://app.example/cb/more",
    "http://app.example/cb",
    "https://app.example:8443/cb",
    "https://evil.app.example/cb",
    "https://app.example@evil.example/cb",
    "https://app.example/cb#frag",
    "https://app.example/%63b",
])
def test_redirect_uri_mismatch_gets_an_error_page_never_a_redirect(
        browser: httpx2.Client, partner: Partner, tenant: Tenant, variant: str) -> None:
    _, challenge = pkce()
    url = authorize_url(partner, challenge, redirect_uri=variant)
    r = browser.get(url)
    assert is_error_page(r), (r.status_code, r.headers)
    assert "evil" not in r.headers.get("location", "")
    # signed in as the admin, still no redirect and no consent page
    sign_in(browser, tenant.admin_email, tenant.admin_password)
    r = browser.get(url)
    assert is_error_page(r)
    assert "Allow" not in r.text


def test_missing_redirect_uri_and_unknown_client_get_error_pages(
        browser: httpx2.Client, partner: Partner) -> None:
    _, challenge = pkce()
    url = authorize_url(partner, challenge).replace(
        "redirect_uri=https%3A%2F%2Fapp.example%2Fcb&", "")
    assert "redirect_uri" not in url
    assert is_error_page(browser.get(url))
    unknown = authorize_url(partner, challenge).replace(partner.client_id, "cli_nope")
    r = browser.get(unknown)
    assert is_error_page(r) and "invalid_client" in r.text


def test_implicit_grant_is_refused(browser: httpx2.Client, partner: Partner) -> None:
    _, challenge = pkce()
    r = browser.get(authorize_url(partner, challenge, response_type="token"))
    params = redirect_params(r)
    assert params["error"] == "unsupported_response_type"
    assert params["state"] == "st-123"
    assert "access_token" not in r.headers["location"]


# -- PKCE (RFC 9700 §2.1.1, RFC 7636) ----------------------------------------------------------

@pytest.mark.parametrize(("challenge", "method"), [
    (None, None),  # no PKCE at all
    (None, "S256"),  # method without challenge
    ("x" * 43, None),  # no method: would default to plain
    ("x" * 43, "plain"),
    ("x" * 43, "S512"),
    ("short", "S256"),
])
def test_authorization_without_s256_pkce_is_refused(
        browser: httpx2.Client, partner: Partner, challenge: str | None,
        method: str | None) -> None:
    r = browser.get(authorize_url(partner, challenge, method=method))
    params = redirect_params(r)  # the redirect URI is valid: the client hears why
    assert params["error"] == "invalid_request"
    assert params["state"] == "st-123"
    assert "code" not in params


@pytest.mark.parametrize(("verifier", "error"), [
    (None, "invalid_request"),
    ("wrong-" + "v" * 50, "invalid_grant"),
    ("v" * 42, "invalid_request"),
    ("v" * 129, "invalid_request"),
    ("v" * 42 + "!", "invalid_request"),
])
def test_code_redemption_needs_the_right_verifier(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        verifier: str | None, error: str) -> None:
    code, right = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    r = exchange(http, partner, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == error
    assert r.headers["cache-control"] == "no-store"
    assert exchange(http, partner, code, right).status_code == 200  # not burnt by a bad try


def test_the_metadata_never_offers_plain_or_implicit_or_password(
        http: httpx2.Client, keyplane: Keyplane) -> None:
    r = http.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    meta = r.json()
    assert meta["issuer"] == keyplane.settings.base_url
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert meta["response_types_supported"] == ["code"]
    for key in ("authorization_endpoint", "token_endpoint", "revocation_endpoint",
                "introspection_endpoint"):
        assert meta[key].startswith(meta["issuer"] + "/oauth/")
    assert "keys:write" not in meta["scopes_supported"]
    assert "contacts:read" in meta["scopes_supported"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    from authlib.oauth2 import rfc8414, rfc9207

    rfc8414.AuthorizationServerMetadata(meta).validate(
        metadata_classes=[rfc9207.AuthorizationServerMetadata])


def test_password_and_client_credentials_grants_are_unsupported(
        http: httpx2.Client, partner: Partner, tenant: Tenant) -> None:
    for data in ({"grant_type": "password", "username": tenant.admin_email,
                  "password": tenant.admin_password},
                 {"grant_type": "client_credentials"}):
        r = http.post("/oauth/token", data=data, auth=(partner.client_id, partner.client_secret))
        assert r.status_code == 400
        assert r.json()["error"] == "unsupported_grant_type"


# -- codes -----------------------------------------------------------------------------------

def test_code_reuse_is_refused_and_revokes_the_tokens_it_gave(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        verifier_key: str) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    first = exchange(http, partner, code, verifier)
    assert first.status_code == 200
    tokens = first.json()
    answer = verify(http, verifier_key, tokens["access_token"])
    assert answer["valid"] is True
    assert answer["kind"] == "access_token" and answer["app_id"] == partner.app_id
    assert answer["key_id"].startswith("con_")  # the connection: what its changes name

    again = exchange(http, partner, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert introspect(http, partner, tokens["access_token"]) == INACTIVE
    assert introspect(http, partner, tokens["refresh_token"]) == INACTIVE
    assert verify(http, verifier_key, tokens["access_token"])["code"] == "REVOKED"
    assert refresh(http, partner, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_expired_code_is_refused(http: httpx2.Client, browser: httpx2.Client, partner: Partner,
                                 tenant: Tenant, clock: SettableClock,
                                 keyplane: Keyplane) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    clock.advance(seconds=keyplane.settings.oauth_code_seconds)
    r = exchange(http, partner, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_code_just_before_expiry_works(http: httpx2.Client, browser: httpx2.Client,
                                       partner: Partner, tenant: Tenant, clock: SettableClock,
                                       keyplane: Keyplane) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    clock.advance(seconds=keyplane.settings.oauth_code_seconds - 1)
    assert exchange(http, partner, code, verifier).status_code == 200


def test_code_of_another_client_or_another_redirect_uri_is_refused(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        operator_key: str) -> None:
    other = approved_app(http, tenant.management_key, operator_key, name="Other",
                         redirect_uris=["https://app.example/cb", "https://app.example/cb2"])
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    r = exchange(http, other, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = exchange(http, partner, code, verifier, redirect_uri="https://app.example/cb2")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert exchange(http, partner, code, verifier).status_code == 200


# -- refresh tokens (RFC 9700 §4.14.2) ------------------------------------------------------

def test_refresh_rotates_and_reuse_revokes_the_whole_family(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        verifier_key: str) -> None:
    first = tokens_for(http, browser, partner, tenant)
    r = refresh(http, partner, first["refresh_token"])
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert introspect(http, partner, second["access_token"])["active"] is True

    replay = refresh(http, partner, first["refresh_token"])  # an attacker's stolen copy
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    for token in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert introspect(http, partner, token) == INACTIVE
    assert verify(http, verifier_key, second["access_token"])["valid"] is False
    assert refresh(http, partner, second["refresh_token"]).json()["error"] == "invalid_grant"
    r = http.get("/v1/connections", headers=auth(tenant.management_key))
    assert r.json()["items"] == []


def test_refresh_cannot_widen_scope(http: httpx2.Client, browser: httpx2.Client,
                                    partner: Partner, tenant: Tenant) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password,
                              scopes=["contacts:read"])
    first = exchange(http, partner, code, verifier).json()
    assert first["scope"] == "contacts:read"
    r = refresh(http, partner, first["refresh_token"], scope="contacts:read contacts:write")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = refresh(http, partner, first["refresh_token"], scope="contacts:read")
    assert r.status_code == 200 and r.json()["scope"] == "contacts:read"


def test_refresh_tokens_have_an_absolute_lifetime(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        clock: SettableClock, keyplane: Keyplane) -> None:
    days = keyplane.settings.oauth_refresh_token_days
    token = tokens_for(http, browser, partner, tenant)["refresh_token"]
    clock.advance(days=days - 1)
    r = refresh(http, partner, token)
    assert r.status_code == 200
    assert r.json()["expires_in"] <= 86400  # the access token never outlives the family
    clock.advance(days=1)
    r = refresh(http, partner, r.json()["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_access_tokens_expire_after_an_hour(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        clock: SettableClock, verifier_key: str) -> None:
    access = tokens_for(http, browser, partner, tenant)
    assert access["expires_in"] == 3600
    clock.advance(seconds=3599)
    assert verify(http, verifier_key, access["access_token"])["valid"] is True
    clock.advance(seconds=1)
    assert verify(http, verifier_key, access["access_token"])["code"] == "EXPIRED"
    assert introspect(http, partner, access["access_token"]) == INACTIVE


# -- client authentication ---------------------------------------------------------------

def test_wrong_client_secret_is_401_with_www_authenticate(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": partner.redirect_uri}
    wrong = partner.client_secret[:-1] + ("A" if partner.client_secret[-1] != "A" else "B")
    for credentials in ((partner.client_id, wrong), (partner.client_id, "garbage"),
                        ("cli_unknown", partner.client_secret)):
        r = http.post("/oauth/token", data=data, auth=credentials)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "invalid_client"
        assert r.headers["www-authenticate"].startswith("Basic")
        assert r.headers["cache-control"] == "no-store"
    r = http.post("/oauth/token", data={**data, "client_id": partner.client_id,
                                        "client_secret": wrong})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = http.post("/oauth/token", data={**data, "client_id": partner.client_id})
    assert r.status_code == 401  # no public clients: a secret is always needed
    # the right secret in the body (client_secret_post) still works
    r = http.post("/oauth/token", data={**data, "client_id": partner.client_id,
                                        "client_secret": partner.client_secret})
    assert r.status_code == 200, r.text


def test_client_secret_in_the_query_string_is_refused(
        http: httpx2.Client, partner: Partner) -> None:
    r = http.post("/oauth/token?" + urlencode({"client_id": partner.client_id,
                                               "client_secret": partner.client_secret}),
                  data={"grant_type": "refresh_token", "refresh_token": "x"})
    assert r.status_code == 400
    assert partner.client_secret not in r.text


# -- app status ---------------------------------------------------------------------------

def test_pending_and_rejected_apps_cannot_start_flows(
        http: httpx2.Client, browser: httpx2.Client, tenant: Tenant, operator_key: str) -> None:
    from tests.integration.oauth_support import register

    pending = register(http, tenant.management_key).json()
    rejected = register(http, tenant.management_key, name="Nope").json()
    r = http.post(f"/v1/apps/{rejected['id']}/reject", json={"reason": "spam"},
                  headers=auth(operator_key))
    assert r.status_code == 200 and r.json()["client_id"] is None
    assert pending["client_id"] is None
    _, challenge = pkce()
    for app in (pending, rejected):
        fake = Partner(app["id"], app["id"], "x", app["redirect_uris"][0], app["scopes"])
        r = browser.get(authorize_url(fake, challenge))
        assert is_error_page(r) and "invalid_client" in r.text
    r = http.post(f"/v1/apps/{rejected['id']}/approve", headers=auth(operator_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_status"


def test_a_suspended_app_can_neither_start_flows_nor_use_tokens(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        operator_key: str, verifier_key: str) -> None:
    tokens = tokens_for(http, browser, partner, tenant)
    assert verify(http, verifier_key, tokens["access_token"])["valid"] is True
    r = http.post(f"/v1/apps/{partner.app_id}/suspend", json={"reason": "abuse report"},
                  headers=auth(operator_key))
    assert r.status_code == 200 and r.json()["status"] == "suspended"
    answer = verify(http, verifier_key, tokens["access_token"])
    assert answer["code"] == "DISABLED" and "app is suspended" in answer["message"]
    _, challenge = pkce()
    page = browser.get(authorize_url(partner, challenge))
    assert is_error_page(page) and "This app is suspended" in page.text
    r = refresh(http, partner, tokens["refresh_token"])
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert "suspended" in r.json()["error_description"]
    # reinstated: the same connection works again (suspension is a reversible lock)
    r = http.post(f"/v1/apps/{partner.app_id}/approve", headers=auth(operator_key))
    assert r.status_code == 200 and "client_secret" not in r.json()
    assert verify(http, verifier_key, tokens["access_token"])["valid"] is True


# -- who may consent -------------------------------------------------------------------------

def test_a_member_who_is_not_an_admin_cannot_authorise(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        keyplane: Keyplane) -> None:
    keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {
        "email": "member@example.com", "role": "member",
        "password": "member password 1234"})
    _, challenge = pkce()
    url = authorize_url(partner, challenge)
    assert sign_in(browser, "member@example.com", "member password 1234", url).status_code == 303
    page = browser.get(url)
    assert page.status_code == 403
    assert "Only an administrator can authorise this app" in page.text
    assert "Zapier" in page.text and "Acme" in page.text
    assert 'name="decision"' not in page.text
    # a hand-made POST gets the same answer and no code
    r = browser.post(url, data={"csrf_token": csrf(page.text), "decision": "allow",
                                "scope": "contacts:read"})
    assert r.status_code == 403 and "location" not in r.headers


def test_scope_outside_the_registration_is_refused(
        browser: httpx2.Client, partner: Partner) -> None:
    _, challenge = pkce()
    for scope in ("calendars:read", "contacts:read keys:write", "payments:write", "nope:read"):
        params = redirect_params(browser.get(authorize_url(partner, challenge, scope=scope)))
        assert params["error"] == "invalid_scope"
        assert params["state"] == "st-123"


def test_consent_names_the_app_the_tenant_and_each_scope_in_words(
        browser: httpx2.Client, partner: Partner, tenant: Tenant) -> None:
    _, challenge = pkce()
    url = authorize_url(partner, challenge)
    sign_in(browser, tenant.admin_email, tenant.admin_password, url)
    page = browser.get(url)
    assert page.status_code == 200
    for words in ("Zapier", "Acme", "View contacts", "Edit contacts", "View payments",
                  "60 minutes", 'name="scope" value="payments:read"'):
        assert words in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in page.headers


def test_the_admin_can_grant_a_subset_and_deny(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        verifier_key: str, keyplane: Keyplane) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password,
                              scopes=["contacts:read"])
    tokens = exchange(http, partner, code, verifier).json()
    assert tokens["scope"] == "contacts:read"
    answer = verify(http, verifier_key, tokens["access_token"], scopes=["contacts:write"])
    assert answer["code"] == "INSUFFICIENT_SCOPE"
    _, challenge = pkce()
    denied = consent(browser, authorize_url(partner, challenge, state="s2"), decision="deny")
    params = redirect_params(denied)
    assert params == {"error": "access_denied", "state": "s2",
                      "error_description": params["error_description"],
                      "iss": keyplane.settings.base_url}


def test_consent_form_needs_its_csrf_token(browser: httpx2.Client, partner: Partner,
                                           tenant: Tenant) -> None:
    _, challenge = pkce()
    url = authorize_url(partner, challenge)
    sign_in(browser, tenant.admin_email, tenant.admin_password, url)
    for token in ("", "forged"):
        r = browser.post(url, data={"csrf_token": token, "decision": "allow",
                                    "scope": "contacts:read"})
        assert is_error_page(r)


def test_authorization_response_returns_state_and_issuer(
        browser: httpx2.Client, partner: Partner, tenant: Tenant, keyplane: Keyplane) -> None:
    _, challenge = pkce()
    url = authorize_url(partner, challenge, state="opaque/state+value=1")
    sign_in(browser, tenant.admin_email, tenant.admin_password, url)
    r = consent(browser, url)
    assert r.headers["location"].startswith(partner.redirect_uri + "?")
    params = redirect_params(r)
    assert params["state"] == "opaque/state+value=1"
    assert params["iss"] == keyplane.settings.base_url
    assert params["code"].startswith("kpac_")


def test_no_cors_on_the_authorization_endpoint(browser: httpx2.Client, partner: Partner) -> None:
    _, challenge = pkce()
    r = browser.get(authorize_url(partner, challenge), headers={"Origin": "https://evil.example"})
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = browser.options(authorize_url(partner, challenge),
                        headers={"Origin": "https://evil.example",
                                 "Access-Control-Request-Method": "POST"})
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


# -- tokens on the verify path ------------------------------------------------------------

def test_access_tokens_follow_the_admins_current_rights(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        verifier_key: str) -> None:
    access = tokens_for(http, browser, partner, tenant)["access_token"]
    answer = verify(http, verifier_key, access)
    assert answer["valid"] is True and answer["kind"] == "access_token"
    assert answer["scopes"] == ["contacts:read", "contacts:write", "payments:read"]
    assert answer["owner_id"] == tenant.admin_id and answer["tenant_id"] == tenant.id
    r = http.post("/v1/groups", json={"name": "contacts only", "scopes": ["contacts:read"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    r = http.patch(f"/v1/members/{tenant.admin_id}", json={"group_ids": [r.json()["id"]]},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    assert verify(http, verifier_key, access)["scopes"] == ["contacts:read"]
    assert verify(http, verifier_key, access, scopes=["payments:read"])["code"] == (
        "INSUFFICIENT_SCOPE")


def test_access_tokens_cannot_manage_keyplane(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant) -> None:
    tokens = tokens_for(http, browser, partner, tenant)
    r = http.get("/v1/keys", headers=auth(tokens["access_token"]))
    assert r.status_code == 403
    r = http.get("/v1/keys", headers=auth(tokens["refresh_token"]))
    assert r.status_code == 401  # a refresh token is never a bearer credential
    r = http.post("/v1/verify", json={"key": tokens["refresh_token"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 403


# -- RFC 7009 revocation and RFC 7662 introspection --------------------------------------------

def test_introspection_answers_exactly_inactive_for_what_it_must_not_describe(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        operator_key: str) -> None:
    tokens = tokens_for(http, browser, partner, tenant)
    other = approved_app(http, tenant.management_key, operator_key, name="Other")
    assert introspect(http, other, tokens["access_token"]) == INACTIVE  # another client's
    for garbage in ("garbage", "kpat_" + "A" * 38, typo(tokens["access_token"])):
        assert introspect(http, partner, garbage) == INACTIVE
    active = introspect(http, partner, tokens["access_token"])
    assert active["active"] is True
    assert active["client_id"] == partner.client_id and active["sub"] == tenant.admin_id
    assert {"scope", "exp", "iat", "aud", "iss"} <= set(active)
    r = http.post("/oauth/introspect", data={"token": tokens["access_token"]})
    assert r.status_code == 401
    r = http.post("/oauth/introspect", data={"token": tokens["access_token"]},
                  auth=(partner.client_id, "wrong"))
    assert r.status_code == 401 and "www-authenticate" in r.headers


def test_rfc7009_revocation(http: httpx2.Client, browser: httpx2.Client, partner: Partner,
                            tenant: Tenant, operator_key: str, verifier_key: str) -> None:
    tokens = tokens_for(http, browser, partner, tenant)
    client = (partner.client_id, partner.client_secret)
    assert http.post("/oauth/revoke", data={"token": "garbage"}, auth=client).status_code == 200
    r = http.post("/oauth/revoke", data={"token": "garbage"})
    assert r.status_code == 401
    r = http.post("/oauth/revoke", data={"token": tokens["access_token"],
                                         "token_type_hint": "id_token"}, auth=client)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_token_type"
    other = approved_app(http, tenant.management_key, operator_key, name="Other")
    r = http.post("/oauth/revoke", data={"token": tokens["access_token"]},
                  auth=(other.client_id, other.client_secret))
    assert r.status_code == 400  # refused, with no effect:
    assert verify(http, verifier_key, tokens["access_token"])["valid"] is True

    # an access token alone (with a wrong hint: it is still found)
    r = http.post("/oauth/revoke", data={"token": tokens["access_token"],
                                         "token_type_hint": "refresh_token"}, auth=client)
    assert r.status_code == 200
    assert verify(http, verifier_key, tokens["access_token"])["code"] == "REVOKED"
    assert introspect(http, partner, tokens["refresh_token"])["active"] is True

    # the refresh token ends the grant: the new access tokens stop too
    fresh = refresh(http, partner, tokens["refresh_token"]).json()
    r = http.post("/oauth/revoke", data={"token": fresh["refresh_token"]}, auth=client)
    assert r.status_code == 200
    assert verify(http, verifier_key, fresh["access_token"])["code"] == "REVOKED"
    assert introspect(http, partner, fresh["access_token"]) == INACTIVE


def test_secrets_are_stored_only_as_digests(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        keyplane: Keyplane) -> None:
    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    tokens = exchange(http, partner, code, verifier).json()
    session = next(c.value for c in browser.cookies.jar if c.name == "kp_session")
    secrets = [partner.client_secret, code, tokens["access_token"], tokens["refresh_token"],
               session]
    import sqlalchemy as sa

    dump: list[str] = []
    with keyplane.engine.connect() as conn:
        for table in ("oauth_apps", "oauth_client_secrets", "oauth_codes", "oauth_connections",
                      "oauth_tokens", "web_sessions", "audit_events", "changes"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                dump.append(" ".join(str(v) for v in row))
    text = "\n".join(dump)
    assert len(dump) > 6
    for secret in secrets:
        assert secret not in text


def test_concurrent_redemptions_and_refreshes_let_exactly_one_through(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        server: RunningServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)

    def redeem(_: int) -> httpx2.Response:
        with httpx2.Client(base_url=server.url, timeout=30) as c:
            return exchange(c, partner, code, verifier)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(redeem, range(8)))
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == 1, [r.status_code for r in answers]
    assert all(r.json()["error"] == "invalid_grant" for r in answers if r.status_code != 200)
    # the replays revoked what the one success got
    assert introspect(http, partner, ok[0].json()["access_token"]) == INACTIVE

    fresh = tokens_for(http, browser, partner, tenant)

    def rotate(_: int) -> httpx2.Response:
        with httpx2.Client(base_url=server.url, timeout=30) as c:
            return refresh(c, partner, fresh["refresh_token"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(rotate, range(8)))
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == 1, [r.status_code for r in answers]
    assert introspect(http, partner, ok[0].json()["refresh_token"]) == INACTIVE


def test_access_tokens_follow_the_tenants_tls_policy(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        keyplane: Keyplane, verifier_key: str) -> None:
    """As the tenant's keys do: over plain HTTP a token is refused while the tenant requires
    TLS (the default), and accepted once its policy allows plain HTTP."""
    token = tokens_for(http, browser, partner, tenant)["access_token"]
    assert verify(http, verifier_key, token, tls=True)["code"] == "VALID"
    assert verify(http, verifier_key, token, tls=False)["code"] == "TLS_REQUIRED"
    keyplane.tenants.update(SYSTEM, tenant.id, {"policy": {"require_tls_default": False}})
    assert verify(http, verifier_key, token, tls=False)["code"] == "VALID"


def test_reauthorising_the_same_app_updates_the_one_connection(
        http: httpx2.Client, browser: httpx2.Client, partner: Partner, tenant: Tenant,
        verifier_key: str) -> None:
    """The same admin connects the same app to the same tenant twice: one connection, whose old
    tokens end as the new ones are handed out (no gap for the app)."""
    first = tokens_for(http, browser, partner, tenant)
    connection = verify(http, verifier_key, first["access_token"])["key_id"]
    second = tokens_for(http, browser, partner, tenant)
    assert verify(http, verifier_key, second["access_token"])["code"] == "VALID"
    assert verify(http, verifier_key, second["access_token"])["key_id"] == connection
    assert verify(http, verifier_key, first["access_token"])["valid"] is False
    r = refresh(http, partner, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert refresh(http, partner, second["refresh_token"]).status_code == 200
    r = http.get("/v1/connections", headers=auth(tenant.management_key))
    assert [c["id"] for c in r.json()["items"]] == [connection]
