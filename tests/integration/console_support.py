"""Helpers for the console suites: people of a tenant other than its admin, signing in through
the real form, and reading the console's forms."""

from __future__ import annotations

import re
from html import unescape

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from tests.conftest import auth
from tests.integration.oauth_support import csrf, sign_in

MEMBER_PASSWORD = "member password 1"


def add_member(kp: Keyplane, tenant_id: str, email: str, role: str = "member") -> str:
    return kp.principals.create(SYSTEM, tenant_id, PrincipalKind.MEMBER, {
        "email": email, "name": email.split("@")[0].title(), "role": role,
        "password": MEMBER_PASSWORD}).id


def signed_in(http: httpx2.Client, email: str, password: str) -> None:
    r = sign_in(http, email, password)
    assert r.status_code == 303, r.text


def form_token(http: httpx2.Client, path: str = "/keys") -> str:
    page = http.get(path)
    assert page.status_code == 200, page.text
    return csrf(page.text)


def secret_in(html: str) -> str:
    found = re.search(r'<code id="new-secret">([^<]+)</code>', html)
    assert found, "no one-time secret on the page"
    return unescape(found.group(1))


def verify(http: httpx2.Client, verifier_key: str, secret: str,
           scopes: list[str] | None = None) -> str:
    r = http.post("/v1/verify", headers=auth(verifier_key),
                  json={"key": secret, "scopes": scopes or [], "tls": True})
    assert r.status_code == 200, r.text
    code: str = r.json()["code"]
    return code
