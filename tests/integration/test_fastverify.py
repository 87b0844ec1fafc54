"""The pure-ASGI fast path of POST /v1/verify answers cache hits exactly as the route would,
and hands everything else to the route."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.web.fastverify import VerifyFastPath
from tests.conftest import Tenant, auth


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


def test_over_http_the_fast_and_the_slow_answers_are_the_same(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:write"],
        "allowed_ips": ["203.0.113.0/24"], "ratelimit": None}).secret
    for body in ({"key": secret, "scopes": ["contacts:read"], "ip": "203.0.113.5", "tls": True},
                 {"key": f"zapier:{secret}", "ip": "198.51.100.1", "tls": True},
                 {"key": secret, "ip": "203.0.113.5"}):
        first = http.post("/v1/verify", json=body, headers=auth(verifier_key))  # may be a miss
        second = http.post("/v1/verify", json=body, headers=auth(verifier_key))  # a hit
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert second.headers["cache-control"] == "no-store" and "x-request-id" in second.headers
