"""The pure-ASGI fast path of POST /v1/verify answers cache hits exactly as the route would,
and hands everything else to the route."""

from __future__ import annotations

import asyncio
import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.core.rights import SYSTEM
from keyplane.services.verification import VERIFY_FAILURES
from keyplane.web.fastverify import VerifyFastPath
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.support import SettableClock


class Inner:
    """Stands in for the FastAPI app behind the fast path; records what reaches it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"route"})


def call(app: Any, body: bytes, token: str | None) -> tuple[int, bytes]:
    headers = [(b"content-type", b"application/json")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/verify", "headers": headers,
             "query_string": b"", "client": ("127.0.0.1", 5000), "scheme": "http",
             "server": ("127.0.0.1", 8080), "root_path": ""}
    sent: list[dict[str, Any]] = []
    chunks = [body[:7], body[7:]]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_cache_hits_never_reach_the_route_and_everything_else_does(
        keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]}).secret
    inner = Inner()
    fast = VerifyFastPath(inner, keyplane)
    body = json.dumps({"key": secret, "scopes": ["contacts:read"], "tls": True}).encode()

    status, _ = call(fast, body, verifier_key)  # nothing cached yet: the route answers
    assert status == 418 and inner.bodies == [body]  # and gets the whole body, unchanged
    keyplane.verifier.verify(verifier_key)
    keyplane.verifier.verify(secret)

    status, out = call(fast, body, verifier_key)
    assert status == 200 and len(inner.bodies) == 1
    answer = json.loads(out)
    assert answer["valid"] is True and answer["code"] == "VALID"
    assert answer["scopes"] == ["contacts:read"]

    status, out = call(fast, json.dumps({"key": secret, "scopes": ["payments:read"],
                                         "tls": True}).encode(), verifier_key)
    assert status == 200 and json.loads(out)["code"] == "INSUFFICIENT_SCOPE"

    for refused in [
        json.dumps({"key": secret, "extra": 1}).encode(),  # unknown field: the route's 422
        json.dumps({"key": secret, "tls": "yes"}).encode(),  # wrong type
        json.dumps({"key": secret, "ip": "not an ip"}).encode(),
        b"{not json",
    ]:
        assert call(fast, refused, verifier_key)[0] == 418
    assert call(fast, body, None)[0] == 418  # no credential: the route's 401
    assert call(fast, body, secret)[0] == 418  # a credential without keys:verify: the 403

    keyplane.keys.revoke(SYSTEM, tenant.id, keyplane.verifier.verify(secret).snapshot.key_id)
    status, _ = call(fast, body, verifier_key)  # the revocation dropped the cached entry
    assert status == 418


# -- remembered answers: the same request again is answered from the answer cache ------------

def remembered(keyplane: Keyplane) -> int:
    return len(keyplane.verifier.cache.answers)


def test_a_remembered_answer_follows_every_change_to_either_key(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str,
        clock: SettableClock) -> None:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:write"]})
    key_id, secret = issued.key.id, issued.secret
    body = {"key": secret, "scopes": ["contacts:write"], "ip": "203.0.113.5", "tls": True}

    def ask() -> str:
        r = http.post("/v1/verify", json=body, headers=auth(verifier_key))
        assert r.status_code == 200, r.text
        return str(r.json()["code"])

    assert [ask(), ask(), ask()] == ["VALID"] * 3
    assert remembered(keyplane) == 1  # what follows is answered from a remembered answer

    keyplane.keys.update(SYSTEM, tenant.id, key_id, {"scopes": ["contacts:read"]})
    assert ask() == "INSUFFICIENT_SCOPE"
    keyplane.keys.update(SYSTEM, tenant.id, key_id, {"scopes": ["contacts:write"]})
    assert [ask(), ask()] == ["VALID", "VALID"]
    keyplane.keys.update(SYSTEM, tenant.id, key_id, {"enabled": False})
    assert [ask(), ask()] == ["DISABLED", "DISABLED"]
    keyplane.keys.update(SYSTEM, tenant.id, key_id, {"enabled": True, "allowed_ips": [
        "198.51.100.0/24"]})
    assert [ask(), ask()] == ["IP_NOT_ALLOWED", "IP_NOT_ALLOWED"]
    keyplane.keys.update(SYSTEM, tenant.id, key_id, {"allowed_ips": []})
    assert [ask(), ask()] == ["VALID", "VALID"]

    clock.advance(days=91)  # past the key's 90 days: no invalidation, only the clock moved
    assert [ask(), ask()] == ["EXPIRED", "EXPIRED"]
    clock.advance(days=-91)
    assert [ask(), ask()] == ["VALID", "VALID"]

    keyplane.keys.revoke(SYSTEM, tenant.id, key_id)
    assert [ask(), ask()] == ["REVOKED", "REVOKED"]


def test_a_remembered_answer_ends_with_the_verifier_credential(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    verifier = keyplane.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                   "require_tls": False}, operator=True)
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id}).secret
    body = {"key": secret, "tls": True}
    for _ in range(3):
        r = http.post("/v1/verify", json=body, headers=auth(verifier.secret))
        assert r.status_code == 200 and r.json()["code"] == "VALID"
    assert remembered(keyplane) == 1
    keyplane.keys.update(SYSTEM, None, verifier.key.id, {"scopes": ["platform:read"]},
                         operator=True)
    r = http.post("/v1/verify", json=body, headers=auth(verifier.secret))
    assert r.status_code == 403
    keyplane.keys.revoke(SYSTEM, None, verifier.key.id, operator=True)
    r = http.post("/v1/verify", json=body, headers=auth(verifier.secret))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credential"


def test_a_remembered_answer_is_given_only_to_the_same_credential_headers(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    # the request's digest covers the headers that carry the caller's credential as sent: any
    # other header set is verified afresh, by the route's rule for which header counts
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id}).secret
    body = {"key": secret, "tls": True}
    for _ in range(3):
        r = http.post("/v1/verify", json=body, headers=auth(verifier_key))
        assert r.status_code == 200 and r.json()["code"] == "VALID"
    assert remembered(keyplane) == 1
    wrong = tokens.generate("kp")  # well-formed, unknown
    cases: list[tuple[list[tuple[str, str]], int]] = [
        ([("x-api-key", verifier_key)], 200),  # the same credential in another header
        ([("authorization", "Basic Zm9vOmJhcg=="), ("x-api-key", verifier_key)], 200),
        ([("authorization", f"Bearer {wrong}")], 401),
        # the first Authorization header is the one read: a valid one after it does not count
        ([("authorization", f"Bearer {wrong}"), ("authorization", f"Bearer {verifier_key}")],
         401),
        ([("authorization", f"Bearer {wrong}"), ("x-api-key", verifier_key)], 401),
        ([], 401),
    ]
    for _ in range(2):  # the second time, whatever was remembered the first time
        for headers, status in cases:
            r = http.post("/v1/verify", json=body, headers=headers)
            assert r.status_code == status, (headers, r.text)
            if status == 200:
                assert r.json()["code"] == "VALID"
            else:
                assert r.json()["error"]["code"] == (
                    "invalid_credential" if headers else "unauthenticated")


def test_remembered_answers_count_every_use_of_both_keys(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant) -> None:
    verifier = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "tenant gateway", "owner_id": tenant.admin_id, "scopes": ["keys:verify"],
        "require_tls": False})
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]})
    for body in [{"key": issued.secret, "tls": True}] * 7 + [
            {"key": issued.secret, "tls": True, "scopes": ["payments:read"]}] * 3:
        r = http.post("/v1/verify", json=body, headers=auth(verifier.secret))
        assert r.status_code == 200
    assert remembered(keyplane) == 2
    keyplane.usage.flush()

    def totals(key_id: str) -> dict[str, int]:
        series = keyplane.usage_reports.series(SYSTEM, tenant.id, key_id, start=None, end=None)
        out: dict[str, int] = {}
        for item in series["items"]:
            out[item["outcome"]] = out.get(item["outcome"], 0) + item["count"]
        return out

    assert totals(issued.key.id) == {"VALID": 7, "INSUFFICIENT_SCOPE": 3}
    assert totals(verifier.key.id) == {"VALID": 10}


def test_answers_that_move_a_counter_are_never_remembered(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    limited = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "limited", "owner_id": tenant.admin_id,
        "ratelimit": {"limit": 3, "window_seconds": 60}}).secret
    answers = [http.post("/v1/verify", json={"key": limited, "tls": True},
                         headers=auth(verifier_key)).json() for _ in range(4)]
    assert [a["code"] for a in answers] == ["VALID"] * 3 + ["RATE_LIMITED"]
    assert [a["ratelimit"]["remaining"] for a in answers] == [2, 1, 0, 0]
    assert remembered(keyplane) == 0


def test_an_address_blocked_for_guessing_is_refused_a_remembered_answer(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    with serving(*database, tmp_path, clock, failure_limit=3, failure_window_seconds=60,
                 trusted_proxies=["127.0.0.1/32"]) as (kp, http):
        tenant = make_tenant(kp)
        verifier = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        valid = kp.keys.create(SYSTEM, tenant.id, {"name": "k",
                                                   "owner_id": tenant.admin_id}).secret

        def ask(key: str, ip: str, via: str = "192.0.2.1") -> httpx2.Response:
            return http.post("/v1/verify", json={"key": key, "ip": ip, "tls": True},
                             headers={**auth(verifier), "X-Forwarded-For": via})

        assert [ask(valid, "198.51.100.9").json()["code"] for _ in range(3)] == ["VALID"] * 3
        assert [ask(valid, "198.51.100.20", "192.0.2.2").status_code
                for _ in range(2)] == [200, 200]
        assert len(kp.verifier.cache.answers) == 2
        guesses = [ask(tokens.generate("kp"), "198.51.100.9").json()["code"]
                   for _ in range(4)]
        assert guesses == ["NOT_FOUND"] * 3 + ["RATE_LIMITED"]
        refused = ask(valid, "198.51.100.9").json()  # remembered, but the address is not
        assert refused["code"] == "RATE_LIMITED" and refused["key_id"] is None
        assert ask(valid, "198.51.100.10").json()["code"] == "VALID"

        # a gateway address that keeps presenting bad credentials is refused too
        bad = [http.post("/v1/verify", json={"key": valid, "tls": True}, headers={
            **auth(tokens.generate("kp")), "X-Forwarded-For": "192.0.2.2"}).status_code
            for _ in range(4)]
        assert bad == [401, 401, 401, 429]
        assert ask(valid, "198.51.100.20", "192.0.2.2").status_code == 429  # remembered
        assert ask(valid, "198.51.100.20", "192.0.2.1").status_code == 200


def test_the_answer_cache_can_be_turned_off(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    with serving(*database, tmp_path, clock, verify_answer_cache_size=0) as (kp, http):
        tenant = make_tenant(kp)
        verifier = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        valid = kp.keys.create(SYSTEM, tenant.id, {"name": "k",
                                                   "owner_id": tenant.admin_id}).secret
        codes = [http.post("/v1/verify", json={"key": valid, "tls": True},
                           headers=auth(verifier)).json()["code"] for _ in range(3)]
        assert codes == ["VALID"] * 3
        assert len(kp.verifier.cache.answers) == len(kp.verifier.cache.verdicts) == 0


def test_no_cache_keeps_a_secret_in_clear(http: httpx2.Client, keyplane: Keyplane,
                                          tenant: Tenant, verifier_key: str) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]}).secret
    for _ in range(3):
        r = http.post("/v1/verify", json={"key": f"zapier:{secret}", "ip": "203.0.113.5",
                                          "tls": True}, headers=auth(verifier_key))
        assert r.json()["code"] == "VALID"
    cache = keyplane.verifier.cache
    assert len(cache.answers) and len(cache.verdicts) and len(cache.hits)
    held = repr([list(store._data.items()) for store in (cache.answers, cache.verdicts,
                                                          cache.hits, cache.misses)])
    for s in (secret, verifier_key):
        assert s not in held and s.encode().hex() not in held
        assert s[3:20] not in held  # not even part of it


def test_the_fast_path_refuses_a_verifier_address_blocked_for_guessing(
        keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    """Guesses without ``ip`` count against the verifier's own address; once it is blocked,
    even a cached valid key is RATE_LIMITED (the service answers it without I/O)."""
    secret = keyplane.keys.create(SYSTEM, tenant.id, {"name": "zap",
                                                      "owner_id": tenant.admin_id}).secret
    inner = Inner()
    fast = VerifyFastPath(inner, keyplane)
    body = json.dumps({"key": secret, "tls": True}).encode()
    keyplane.verifier.verify(verifier_key)
    keyplane.verifier.verify(secret)
    assert call(fast, body, verifier_key)[0] == 200
    assert call(fast, body, verifier_key)[0] == 200  # remembered

    guess = json.dumps({"key": tokens.generate("kp"), "tls": True}).encode()
    assert call(fast, guess, verifier_key)[0] == 418  # a guess is the route's to count
    for _ in range(keyplane.settings.failure_limit + 1):
        keyplane.throttle.failed(VERIFY_FAILURES, ip_address("127.0.0.1"))
    status, out = call(fast, body, verifier_key)
    assert status == 200 and json.loads(out)["code"] == "RATE_LIMITED"
    assert json.loads(out)["key_id"] is None and len(inner.bodies) == 1
    with_ip = json.dumps({"key": secret, "tls": True, "ip": "198.51.100.1"}).encode()
    assert call(fast, with_ip, verifier_key)[0] == 200  # the end user's address is its own
