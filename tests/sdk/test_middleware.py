"""KeyplaneMiddleware in front of a Starlette app, verifying against the real Keyplane server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.sdk import Client, KeyplaneMiddleware, requires
from tests.conftest import Tenant
from tests.sdk.conftest import CountingTransport, Protected, data_key, served_uses
from tests.support import RunningServer, free_port


async def whoami(request: Request) -> JSONResponse:
    who = request.scope["keyplane"]
    assert request.state.keyplane is who
    return JSONResponse({**who, "scopes": sorted(who["scopes"])})


@requires("contacts:read")
async def list_contacts(request: Request) -> JSONResponse:
    return JSONResponse({"items": []})


@requires("contacts:write")
def create_contact(request: Request) -> JSONResponse:  # a sync endpoint (run in a thread)
    return JSONResponse({"id": "con_1"}, status_code=201)


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@requires("contacts:read")
async def public_but_guarded(request: Request) -> PlainTextResponse:
    return PlainTextResponse("never without a key")


@requires("contacts:read")
async def contacts_feed(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"tenant_id": websocket.scope["keyplane"]["tenant_id"]})
    await websocket.close()


def product_app() -> Starlette:
    return Starlette(routes=[
        Route("/whoami", whoami),
        Route("/contacts", list_contacts, methods=["GET"]),
        Route("/contacts", create_contact, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/public/guarded", public_but_guarded),
        WebSocketRoute("/contacts/feed", contacts_feed),
    ])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_identity_in_scope_and_request_state(protect: Callable[..., Protected], kp: Client,
                                             tenant: Any) -> None:
    issued = data_key(kp, "contacts:write", "payments:read")
    app = protect(product_app())
    r = app.http.get("/whoami", headers=bearer(issued["key"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"tenant_id": tenant.id, "key_id": issued["id"],
                        "owner_id": issued["owner_id"], "kind": "key", "app_id": None,
                        "scopes": ["contacts:read", "contacts:write", "payments:read"]}


def test_requires_on_sync_and_async_starlette_endpoints(protect: Callable[..., Protected],
                                                        kp: Client) -> None:
    reader = data_key(kp, "contacts:read")["key"]
    writer = data_key(kp, "contacts:write")["key"]
    app = protect(product_app())
    assert app.http.get("/contacts", headers=bearer(reader)).status_code == 200
    r = app.http.post("/contacts", headers=bearer(reader))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"
    assert "contacts:write" in r.json()["error"]["message"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert app.http.post("/contacts", headers=bearer(writer)).status_code == 201
    assert app.http.get("/contacts", headers=bearer(writer)).status_code == 200  # write ⇒ read


def test_malformed_key_is_refused_offline_like_an_unknown_key(
        protect: Callable[..., Protected], kp: Client) -> None:
    counting = CountingTransport()
    app = protect(product_app(), transport=counting)
    real = data_key(kp, "contacts:read")["key"]
    typo = real[:-1] + ("A" if real[-1] != "A" else "B")
    garbage = "kp_" + "x" * 38
    for bad in (typo, garbage, "hello", "a" * 5000):
        r = app.http.get("/contacts", headers=bearer(bad))
        assert r.status_code == 401
        assert r.json() == {"error": {"code": "invalid_key",
                                      "message": "the API key is not valid"}}
    assert counting.paths["/v1/verify"] == 0

    unknown = tokens.generate("kp")  # well-formed, never issued: asks Keyplane
    r_unknown = app.http.get("/contacts", headers=bearer(unknown))
    assert counting.paths["/v1/verify"] == 1
    assert r_unknown.status_code == 401
    assert r_unknown.json() == r.json()  # same body: no oracle for "well-formed"
    assert r_unknown.headers["www-authenticate"] == r.headers["www-authenticate"]


def test_missing_key_gets_401_with_bearer_challenge(protect: Callable[..., Protected]) -> None:
    app = protect(product_app())
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"},
                    {"X-API-Key": ""}):
        r = app.http.get("/contacts", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "missing_key"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/json"


def test_valid_verdicts_are_cached_per_key_and_address(protect: Callable[..., Protected],
                                                       kp: Client) -> None:
    counting = CountingTransport()
    app = protect(product_app(), transport=counting, trusted_proxies=["127.0.0.1/32"])
    key = data_key(kp, "contacts:read")["key"]
    for _ in range(5):
        assert app.http.get("/contacts", headers=bearer(key)).status_code == 200
    assert counting.paths["/v1/verify"] == 1
    # another client address (through the trusted proxy) is a different verdict
    r = app.http.get("/contacts", headers={**bearer(key), "X-Forwarded-For": "198.51.100.7"})
    assert r.status_code == 200
    assert counting.paths["/v1/verify"] == 2


def test_concurrent_first_requests_share_one_verification(protect: Callable[..., Protected],
                                                          kp: Client) -> None:
    counting = CountingTransport()
    app = protect(product_app(), transport=counting)
    key = data_key(kp, "contacts:read")["key"]

    async def burst() -> list[int]:
        async with httpx2.AsyncClient(base_url=app.url, timeout=10) as client:
            replies = await asyncio.gather(*[client.get("/contacts", headers=bearer(key))
                                             for _ in range(20)])
        return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * 20
    assert counting.paths["/v1/verify"] == 1


def test_exempt_paths_pass_without_a_key_but_requires_still_guards(
        protect: Callable[..., Protected]) -> None:
    app = protect(product_app(), exempt_paths=["/healthz", "/public/*"])
    assert app.http.get("/healthz").text == "ok"
    r = app.http.get("/public/guarded")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_key"
    assert app.http.get("/whoami").status_code == 401  # not exempt


def test_many_exempt_paths_are_matched_exactly(protect: Callable[..., Protected]) -> None:
    # exact paths only (a prefix needs "/x/*"), repeated entries harmless
    many = [f"/status/{i}" for i in range(12)]
    app = protect(product_app(), exempt_paths=[*many, "/healthz", "/healthz"])
    assert app.http.get("/healthz").text == "ok"
    r = app.http.get("/healthz/")  # only the exact path is exempt
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    assert app.http.get("/whoami").status_code == 401


def test_unreachable_keyplane_fails_closed_with_503(protect: Callable[..., Protected],
                                                    kp: Client) -> None:
    key = data_key(kp, "contacts:read")["key"]
    app = protect(product_app(), url=f"http://127.0.0.1:{free_port()}")
    r = app.http.get("/contacts", headers=bearer(key))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "keyplane_unavailable"
    assert r.headers["retry-after"] == "1"


def test_a_refused_verifier_credential_fails_closed(protect: Callable[..., Protected],
                                                    kp: Client) -> None:
    key = data_key(kp, "contacts:read")["key"]
    not_a_verifier = data_key(kp, "contacts:read")["key"]  # no keys:verify
    app = protect(product_app(), token=not_a_verifier)
    r = app.http.get("/contacts", headers=bearer(key))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "keyplane_unavailable"


def test_bad_configuration_is_refused_at_construction() -> None:
    app = product_app()
    with pytest.raises(ValueError, match="url"):
        KeyplaneMiddleware(app, url="127.0.0.1:8080", token=tokens.generate("kp"))
    with pytest.raises(ValueError, match="token") as info:
        KeyplaneMiddleware(app, url="http://127.0.0.1:8080", token="kp_not-a-key")
    assert "kp_not-a-key" not in str(info.value)  # secrets never in errors


def test_websocket_needs_a_key_and_the_scope(protect: Callable[..., Protected],
                                             kp: Client, tenant: Any) -> None:
    import websockets.sync.client as ws

    reader = data_key(kp, "contacts:read")["key"]
    other = data_key(kp, "payments:read")["key"]
    app = protect(product_app())
    url = app.url.replace("http://", "ws://") + "/contacts/feed"
    with ws.connect(url, additional_headers=bearer(reader)) as conn:
        assert conn.recv(timeout=5) == f'{{"tenant_id":"{tenant.id}"}}'
    for headers in ({}, bearer(other)):
        with pytest.raises(Exception, match="403"):
            ws.connect(url, additional_headers=headers)


def test_rate_limited_key_counts_every_request(protect: Callable[..., Protected],
                                               kp: Client) -> None:
    counting = CountingTransport()
    app = protect(product_app(), transport=counting)
    key = data_key(kp, "contacts:read", ratelimit={"limit": 3, "window_seconds": 60})["key"]
    replies = [app.http.get("/contacts", headers=bearer(key)) for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    assert counting.paths["/v1/verify"] == 4  # never answered from the cache
    assert replies[0].headers["ratelimit-limit"] == "3"
    assert replies[0].headers["ratelimit-remaining"] == "2"
    refused = replies[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 61  # the window, rounded up
    assert refused.headers["ratelimit-remaining"] == "0"


def test_usage_quota_counts_every_request(protect: Callable[..., Protected],
                                         kp: Client) -> None:
    app = protect(product_app())
    key = data_key(kp, "contacts:read", remaining=2)["key"]
    statuses = [app.http.get("/contacts", headers=bearer(key)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_uses_answered_from_the_cache_are_reported_to_keyplane(
        protect: Callable[..., Protected], kp: Client, keyplane: Keyplane,
        tenant: Tenant) -> None:
    counting = CountingTransport()
    app = protect(product_app(), transport=counting, usage_report_seconds=0.2)
    key = data_key(kp, "contacts:read")
    for _ in range(10):
        assert app.http.get("/contacts", headers=bearer(key["key"])).status_code == 200
    assert counting.paths["/v1/verify"] == 1  # nine were answered from the cache
    deadline = time.monotonic() + 10
    while served_uses(keyplane, tenant, key["id"]) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served_uses(keyplane, tenant, key["id"]) == 10
    assert counting.paths["/v1/usage"] >= 1
    last_used = kp.keys.get(key["id"])["last_used_at"]
    assert last_used is not None
    time.sleep(0.5)  # nothing new to report: no more counted
    assert served_uses(keyplane, tenant, key["id"]) == 10


def test_a_graceful_stop_reports_what_the_cache_answered(
        protect: Callable[..., Protected], kp: Client, keyplane: Keyplane,
        tenant: Tenant) -> None:
    app = protect(product_app(), usage_report_seconds=0)  # only at shutdown
    key = data_key(kp, "contacts:read")
    for _ in range(6):
        assert app.http.get("/contacts", headers=bearer(key["key"])).status_code == 200
    assert served_uses(keyplane, tenant, key["id"]) == 1  # only the verification so far
    app.running.stop()  # lifespan shutdown: the middleware reports before it closes
    assert served_uses(keyplane, tenant, key["id"]) == 6


def test_uses_are_kept_while_keyplane_cannot_take_them(kp: Client, keyplane: Keyplane,
                                                       tenant: Tenant, verifier_key: str,
                                                       server: RunningServer) -> None:
    key = data_key(kp, "contacts:read")
    mw = KeyplaneMiddleware(product_app(), url=f"http://127.0.0.1:{free_port()}",
                            token=verifier_key, usage_report_seconds=0)

    async def report_to_nobody_then_to_keyplane() -> tuple[int, dict[str, int], int]:
        mw.runtime.connect()
        mw.usage.pending[key["id"]] = 4
        lost = await mw.usage.flush()  # nobody listens there
        kept = dict(mw.usage.pending)
        await mw.aclose()
        mw.runtime.url = server.url  # Keyplane is back
        mw.runtime.connect()
        delivered = await mw.usage.flush()
        await mw.aclose()
        return lost, kept, delivered

    lost, kept, delivered = asyncio.run(report_to_nobody_then_to_keyplane())
    assert lost == 0 and kept == {key["id"]: 4} and delivered == 4
    assert served_uses(keyplane, tenant, key["id"]) == 4
