"""Connected apps end to end, as a partner and an admin would do it: a real OAuth client library
(Authlib's client on httpx, which no one here wrote), a real browser (Playwright driving Debian's
Chromium) for sign-in and consent, and the example CRM behind the real SDK middleware.

register → approve → sign in → consent → code → token → call the CRM → refresh → revoke the
connection → the next call is refused.

Skipped when /usr/bin/chromium or Playwright is missing, except in CI
(``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where that is a failure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

from tests.conftest import Tenant, auth
from tests.support import RunningServer, start_server

BOUND = 5.0  # seconds for a revocation to reach the SDK process (its p99 is far lower)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class Callback:
    """The partner app's redirect endpoint: a real HTTP server on loopback that records the
    authorization response the browser brings back."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.received.append(self.path)
                outer.arrived.set()
                body = b"<html><body><h1>Connected</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def callback() -> Iterator[Callback]:
    cb = Callback()
    try:
        yield cb
    finally:
        cb.close()


@pytest.fixture
def crm(server: RunningServer, verifier_key: str) -> Iterator[httpx2.Client]:
    """The example CRM behind the real SDK middleware, pointed at the real Keyplane server."""
    from examples.crm.app import create_app

    from tests.sdk.conftest import find_middleware, wait_live

    app = create_app(server.url, verifier_key)
    running = start_server(app, proxy_headers=False)
    client = httpx2.Client(base_url=running.url, timeout=10)
    try:
        wait_live(running, find_middleware(app))
        yield client
    finally:
        client.close()
        running.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_connect_an_app_in_a_real_browser_then_revoke_it(
        chromium: Any, callback: Callback, crm: httpx2.Client, http: httpx2.Client,
        server: RunningServer, tenant: Tenant, operator_key: str,
        request: pytest.FixtureRequest) -> None:
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    # the CRM is served over plain HTTP here: Acme's policy lets its credentials (its access
    # tokens too, which follow the tenant's TLS policy) be used without TLS
    r = http.patch(f"/v1/tenants/{tenant.id}", headers=auth(tenant.management_key),
                   json={"policy": {"require_tls_default": False}})
    assert r.status_code == 200, r.text

    # 1. the partner registers its app; the operator approves it
    r = http.post("/v1/apps", headers=auth(tenant.management_key), json={
        "name": "Zapier", "description": "Automate your CRM", "homepage": "https://zapier.example",
        "redirect_uris": [callback.url],
        "scopes": ["contacts:read", "contacts:write", "payments:read"]})
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    r = http.post(f"/v1/apps/{app_id}/approve", headers=auth(operator_key))
    assert r.status_code == 200, r.text
    client_id, client_secret = r.json()["client_id"], r.json()["client_secret"]

    # 2. the partner's code starts the flow with a client library that discovers the server
    meta = http.get("/.well-known/oauth-authorization-server").json()
    endpoints = {k: meta[k].replace(meta["issuer"], server.url) for k in (
        "authorization_endpoint", "token_endpoint", "revocation_endpoint")}
    oauth = OAuth2Client(client_id, client_secret, redirect_uri=callback.url,
                         scope="contacts:read contacts:write payments:read",
                         code_challenge_method="S256",
                         token_endpoint_auth_method="client_secret_basic")
    request.addfinalizer(oauth.close)
    verifier = "v" + os.urandom(40).hex()  # 81 characters
    url, state = oauth.create_authorization_url(endpoints["authorization_endpoint"],
                                                code_verifier=verifier)
    assert f"code_challenge={create_s256_code_challenge(verifier)}" in url

    # 3. the admin signs in and consents in a real browser
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_url("**/signin?next=*")
        page.fill("#email", tenant.admin_email)
        page.fill("#password", tenant.admin_password)
        page.click("button[type=submit]")
        page.wait_for_url("**/oauth/authorize?*")
        assert page.inner_text("#app-name") == "Zapier"
        assert page.inner_text("#tenant-name") == "Acme"
        text = page.inner_text("main")
        for words in ("View contacts", "Edit contacts", "View payments"):
            assert words in text
        cookie = next(c for c in context.cookies() if c["name"] == "kp_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
        page.uncheck("input[value='payments:read']")  # grant a subset
        page.click("button[value=allow]")
        assert callback.arrived.wait(15), "the browser never reached the app's callback"
        page.wait_for_load_state()
    finally:
        context.close()
    callback_url = callback.url.replace("/callback", "") + callback.received[0]

    # 4. code → tokens, with PKCE and the client secret
    token = oauth.fetch_token(endpoints["token_endpoint"], authorization_response=callback_url,
                              state=state, code_verifier=verifier)
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "contacts:read contacts:write"
    assert token["access_token"].startswith("kpat_")
    assert token["refresh_token"].startswith("kprt_")

    # 5. the product's API (the example CRM behind the SDK middleware) accepts the token
    r = crm.post("/contacts", json={"name": "Ada"}, headers=bearer(token["access_token"]))
    assert r.status_code == 201, r.text
    r = crm.get("/contacts", headers=bearer(token["access_token"]))
    assert r.status_code == 200 and [c["name"] for c in r.json()["items"]] == ["Ada"]
    r = crm.get("/payments", headers=bearer(token["access_token"]))
    assert r.status_code == 403  # payments were not granted

    # 6. refresh: a new pair; the old refresh token is spent. Authlib's client sends its
    # configured scope when refreshing; after a partial consent a correct client asks for what
    # the token response granted (asking for more is invalid_scope, RFC 6749 §6)
    oauth.scope = token["scope"]
    old_refresh = token["refresh_token"]
    fresh = oauth.refresh_token(endpoints["token_endpoint"], refresh_token=old_refresh)
    assert fresh["refresh_token"] != old_refresh
    r = crm.get("/contacts", headers=bearer(fresh["access_token"]))
    assert r.status_code == 200

    # 7. the admin revokes the connection; the next call is refused
    r = http.get("/v1/connections", headers=auth(tenant.management_key))
    (connection,) = r.json()["items"]
    assert connection["app"]["name"] == "Zapier"
    assert connection["authorized_by"]["email"] == tenant.admin_email
    r = http.delete(f"/v1/connections/{connection['id']}", headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    assert "Zapier can no longer call the API" in r.json()["stops_working"]
    revoked_at = time.monotonic()
    status = 200
    while time.monotonic() - revoked_at < BOUND:
        status = crm.get("/contacts", headers=bearer(fresh["access_token"])).status_code
        if status == 401:
            break
        time.sleep(0.05)
    assert status == 401
    with pytest.raises(Exception, match="invalid_grant"):
        oauth.refresh_token(endpoints["token_endpoint"], refresh_token=fresh["refresh_token"])
