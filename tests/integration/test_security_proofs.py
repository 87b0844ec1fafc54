"""Two behaviours docs/security.md cites that no other test pins down on the real server:
a key whose checksum fails is refused (MALFORMED, as the SPEC says) before any lookup of
keys, and a session id chosen before sign-in (session fixation) never becomes a session."""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx2
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from keyplane.core.tokens import generate
from tests.conftest import Tenant, auth
from tests.integration.helpers import create_key, verify
from tests.integration.oauth_support import sign_in
from tests.support import typo


class KeyLookups:
    """Counts statements that read the key tables, from any thread of this process."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self.seen: list[str] = []
        self._lock = threading.Lock()
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.lower()
        # a lookup finds a key by its secret's digest (the usage flush reads keys by id)
        if "select" in text and "digest" in text and ("api_keys" in text or "key_secrets" in text):
            with self._lock:
                self.count += 1
                self.seen.append(statement)


def test_a_failed_checksum_is_refused_before_any_key_lookup_with_the_unknown_keys_answer(
    http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str
) -> None:
    secret = create_key(http, tenant.management_key, scopes=["contacts:read"])["key"]
    assert verify(http, verifier_key, secret)["valid"]  # the verifier's credential is remembered
    lookups = KeyLookups(keyplane.engine)
    r = http.post("/v1/verify", json={"key": typo(secret), "tls": True},
                  headers=auth(verifier_key))
    assert lookups.count == 0, f"a key failing its checksum was looked up: {lookups.seen}"
    unknown = secret[:-7] + ("A" if secret[-7] != "A" else "B") + secret[-6:]  # checksum wrong too
    r2 = http.post("/v1/verify", json={"key": unknown, "tls": True}, headers=auth(verifier_key))
    assert lookups.count == 0
    assert r.status_code == r2.status_code == 200
    assert r.json() == r2.json() and r.json()["code"] == "MALFORMED"  # the SPEC's code
    # the counter sees lookups: a well-formed key that does not exist is looked up
    assert verify(http, verifier_key, generate(keyplane.settings.key_prefix))["code"] == "NOT_FOUND"
    assert lookups.count >= 1


def issued_session(response: httpx2.Response) -> str:
    found = re.search(r"kp_session=([^;]+)", response.headers.get("set-cookie", ""))
    assert found, "sign-in set no session cookie"
    return found.group(1)


def test_a_session_id_planted_before_sign_in_is_never_signed_in(
    http: httpx2.Client, tenant: Tenant
) -> None:
    planted = "attacker-chosen-session-id-0123456789abcdef"
    http.cookies.set("kp_session", planted)
    r = sign_in(http, tenant.admin_email, tenant.admin_password)
    assert r.status_code == 303, r.text[:3000]
    issued = issued_session(r)
    assert issued != planted
    with httpx2.Client(base_url=str(http.base_url), cookies={"kp_session": planted}) as victim:
        page = victim.get("/", follow_redirects=False)
        assert page.status_code in (302, 303) and "/signin" in page.headers["location"]
