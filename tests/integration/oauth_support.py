"""Helpers for the connected-apps suites: register and approve an app, sign in and consent
through the real HTML forms (a cookie-keeping HTTP client, no browser), PKCE pairs."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2

from tests.conftest import auth

REDIRECT = "https://app.example/cb"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Partner:
    app_id: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scopes: list[str]


def register(http: httpx2.Client, key: str, **body: Any) -> httpx2.Response:
    body.setdefault("name", "Zapier")
    body.setdefault("description", "Automations for your CRM")
    body.setdefault("homepage", "https://zapier.example")
    body.setdefault("redirect_uris", [REDIRECT])
    body.setdefault("scopes", ["contacts:read", "contacts:write", "payments:read"])
    return http.post("/v1/apps", json=body, headers=auth(key))


def approved_app(http: httpx2.Client, key: str, operator_key: str, **body: Any) -> Partner:
    r = register(http, key, **body)
    assert r.status_code == 201, r.text
    app = r.json()
    r = http.post(f"/v1/apps/{app['id']}/approve", headers=auth(operator_key))
    assert r.status_code == 200, r.text
    out = r.json()
    return Partner(app["id"], out["client_id"], out["client_secret"], app["redirect_uris"][0],
                   app["scopes"])


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge)"""
    verifier = secrets.token_urlsafe(48)[:64]
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(partner: Partner, challenge: str | None, *, state: str = "st-123",
                  scope: str | None = None, method: str | None = "S256",
                  redirect_uri: str | None = None, **extra: str) -> str:
    params: dict[str, str] = {"response_type": "code", "client_id": partner.client_id,
                              "redirect_uri": redirect_uri or partner.redirect_uri,
                              "state": state}
    if scope is not None:
        params["scope"] = scope
    if challenge is not None:
        params["code_challenge"] = challenge
    if method is not None:
        params["code_challenge_method"] = method
    params.update(extra)
    return "/oauth/authorize?" + urlencode(params)


def csrf(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF token in the page"
    return unescape(found.group(1))


def sign_in(http: httpx2.Client, email: str, password: str, next_path: str = "") -> httpx2.Response:
    page = http.get("/signin", params={"next": next_path} if next_path else None)
    if page.status_code == 303:  # already signed in
        return page
    assert page.status_code == 200, page.text
    return http.post("/signin", data={"email": email, "password": password,
                                      "csrf_token": csrf(page.text), "next": next_path})


def consent(http: httpx2.Client, url: str, decision: str = "allow",
            scopes: list[str] | None = None) -> httpx2.Response:
    """Open the consent page (already signed in) and submit it; returns the POST's answer."""
    page = http.get(url)
    assert page.status_code == 200, page.text
    chosen = scopes if scopes is not None else re.findall(
        r'name="scope" value="([^"]+)"[^>]*checked', page.text)
    data = [("csrf_token", csrf(page.text)), ("decision", decision)]
    data += [("scope", s) for s in chosen]
    body = urlencode(data)
    return http.post(url, content=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})


def redirect_params(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def get_code(http: httpx2.Client, partner: Partner, email: str, password: str,
             scopes: list[str] | None = None) -> tuple[str, str]:
    """Sign in, consent, and return (code, code_verifier)."""
    verifier, challenge = pkce()
    url = authorize_url(partner, challenge)
    r = sign_in(http, email, password, url)
    assert r.status_code == 303, r.text
    params = redirect_params(consent(http, url, scopes=scopes))
    return params["code"], verifier


def exchange(http: httpx2.Client, partner: Partner, code: str, verifier: str | None,
             **extra: str) -> httpx2.Response:
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": partner.redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    data.update(extra)
    return http.post("/oauth/token", data=data,
                     auth=(partner.client_id, partner.client_secret))


def refresh(http: httpx2.Client, partner: Partner, refresh_token: str,
            **extra: str) -> httpx2.Response:
    return http.post("/oauth/token", data={"grant_type": "refresh_token",
                                           "refresh_token": refresh_token, **extra},
                     auth=(partner.client_id, partner.client_secret))


def introspect(http: httpx2.Client, partner: Partner, token: str, **extra: str) -> dict[str, Any]:
    r = http.post("/oauth/introspect", data={"token": token, **extra},
                  auth=(partner.client_id, partner.client_secret))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out
