"""SDK pieces without a server: the verdict cache, client address resolution, the change
follower and the middleware's handling of answers a real server gives only in rare states
(rate limits, keys about to expire), through httpx2's MockTransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import httpx2
import pytest

from keyplane.core import tokens
from keyplane.sdk import KeyplaneMiddleware, requires
from keyplane.sdk._cache import VerdictCache
from keyplane.sdk._changes import ChangeFollower
from keyplane.sdk._credentials import Credentials
from keyplane.sdk._peer import Peer
from keyplane.sdk._protocol import expand_scopes


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ident(key_id: str = "key_1", owner: str = "prn_1", tenant: str = "ten_1") -> Any:
    return MappingProxyType({"key_id": key_id, "owner_id": owner, "tenant_id": tenant,
                             "scopes": frozenset({"contacts:read"}), "kind": "key"})


# -- the verdict cache ------------------------------------------------------------------------

def live_cache(size: int = 100, ttl: float = 30, degraded: float = 1) -> tuple[VerdictCache,
                                                                              Timer]:
    timer = Timer()
    cache = VerdictCache(size, ttl, degraded, timer=timer)
    cache.set_live(True)
    return cache, timer


def test_entries_live_for_the_ttl_and_never_past_expiry() -> None:
    cache, timer = live_cache(ttl=30)
    assert cache.put(b"a", ident(), expires_in=None, generation=cache.generation)
    assert cache.put(b"b", ident("key_2"), expires_in=5, generation=cache.generation)
    timer.now += 4.9
    assert cache.get(b"a") is not None and cache.get(b"b") is not None
    timer.now += 0.2
    assert cache.get(b"b") is None  # the key expired: the TTL does not outlive expires_at
    assert cache.get(b"a") is not None
    timer.now += 25
    assert cache.get(b"a") is None
    assert not cache.put(b"c", ident(), expires_in=-1, generation=cache.generation)


def test_the_lru_is_bounded() -> None:
    cache, _ = live_cache(size=3)
    for i in range(3):
        cache.put(bytes([i]), ident(f"key_{i}"), expires_in=None, generation=cache.generation)
    assert cache.get(bytes([0])) is not None  # 0 is now the most recently used
    for i in range(3, 10):
        cache.put(bytes([i]), ident(f"key_{i}"), expires_in=None, generation=cache.generation)
    assert len(cache) == 3
    assert cache.get(bytes([1])) is None


def test_invalidation_by_key_owner_tenant_and_anything_else() -> None:
    cache, _ = live_cache()
    gen = cache.generation
    cache.put(b"1", ident("key_1", "prn_1", "ten_1"), expires_in=None, generation=gen)
    cache.put(b"2", ident("key_2", "prn_2", "ten_1"), expires_in=None, generation=gen)
    cache.put(b"3", ident("key_3", "prn_3", "ten_2"), expires_in=None, generation=gen)
    cache.put(b"4", ident("key_4", "prn_4", "ten_3"), expires_in=None, generation=gen)
    assert cache.invalidate("key", "key_1") == 1
    assert cache.invalidate("principal", "prn_2") == 1
    assert cache.get(b"3") is not None
    assert cache.invalidate("tenant", "ten_2") == 1
    assert cache.get(b"4") is not None
    assert cache.invalidate("catalogue", "contacts:read") == 1  # unknown scope: drop all
    assert len(cache) == 0


def test_a_change_during_a_verification_keeps_its_answer_out() -> None:
    cache, _ = live_cache()
    before = cache.generation
    cache.invalidate("key", "key_other")
    assert not cache.put(b"a", ident(), expires_in=None, generation=before)
    assert cache.get(b"a") is None


def test_stream_down_shortens_the_ttl() -> None:
    cache, timer = live_cache(ttl=30, degraded=1)
    cache.put(b"old", ident(), expires_in=None, generation=cache.generation)
    cache.set_live(False)
    cache.put(b"new", ident("key_2"), expires_in=None, generation=cache.generation)
    timer.now += 1.01
    assert cache.get(b"old") is None and cache.get(b"new") is None
    cache.set_live(True)
    cache.put(b"again", ident(), expires_in=None, generation=cache.generation)
    timer.now += 29
    assert cache.get(b"again") is not None


# -- where the key is --------------------------------------------------------------------------

A, B, L = "kp_aaaa", "kp_bbbb", "kp_llll"


@pytest.mark.parametrize(("headers", "legacy", "expected"), [
    ([("Authorization", f"Bearer {A}")], False, A),
    ([("Authorization", f"bearer {A}")], False, A),  # the scheme is case-insensitive
    ([("Authorization", f"BEARER   {A}  ")], False, A),
    ([("Authorization", f"Bearer svc:{A}")], False, A),  # "<name>:<key>"
    # the first Authorization decides: another scheme first, and no later one counts
    ([("Authorization", "Basic dXNlcjpwYXNz"), ("Authorization", f"Bearer {A}")], False, None),
    ([("Authorization", "Basic dXNlcjpwYXNz"), ("X-API-Key", B)], False, B),
    ([("Authorization", f"Bearer {A}"), ("Authorization", f"Bearer {B}")], False, A),
    ([("X-API-Key", B), ("Authorization", f"Bearer {A}")], False, A),  # bearer first
    ([("X-API-Key", B), ("X-API-Key", A)], False, B),
    ([("X-API-Key", " "), ("X-API-Key", B)], False, None),  # the first one, blank
    ([("X-API-Key", f"Bearer svc:{B}")], False, B),
    ([("Authorization", "Bearer"), ("X-API-Key", B)], False, B),
    ([("Authorization", "Bearer    "), ("Authorization", f"Bearerx {A}")], False, None),
    ([("Authorization", f"Token {A}")], False, None),
    ([("X-Legacy-Key", L)], False, None),  # only when configured
    ([("X-Legacy-Key", L)], True, L),
    ([("X-Legacy-Key", L), ("X-API-Key", B)], True, B),
    ([("Host", "api.example"), ("X-Legacy-Key", L), ("X-Legacy-Key", B)], True, L),
    ([("X-API-Key", ""), ("X-Legacy-Key", L)], True, L),
    ([], False, None),
])
def test_the_key_is_read_from_the_first_header_that_carries_one_in_precedence_order(
        headers: list[tuple[str, str]], legacy: bool, expected: str | None) -> None:
    found = Credentials(["X-Legacy-Key"] if legacy else []).extract(
        [(name.lower().encode(), value.encode()) for name, value in headers])
    assert found == (expected.encode() if expected is not None else None)


# -- client address and TLS -------------------------------------------------------------------

def scope(peer: str, headers: dict[str, str] | None = None,
          scheme: str = "http") -> dict[str, Any]:
    return {"client": (peer, 50000), "scheme": scheme,
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}


def test_forwarded_headers_only_from_trusted_proxies() -> None:
    xff = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert Peer().resolve(scope("10.0.0.5", xff)) == ("10.0.0.5", False)
    assert Peer(["10.0.0.0/8"]).resolve(scope("192.0.2.1", xff)) == ("192.0.2.1", False)
    assert Peer(["10.0.0.0/8"]).resolve(scope("10.0.0.5", xff)) == ("203.0.113.9", True)
    assert Peer().resolve(scope("10.0.0.5", scheme="https")) == ("10.0.0.5", True)


def test_rightmost_untrusted_hop_is_the_client() -> None:
    peer = Peer(["10.0.0.0/8", "2001:db8::/32"])
    chain = {"X-Forwarded-For": "198.51.100.66, 203.0.113.9, 10.1.1.1"}
    assert peer.resolve(scope("10.0.0.5", chain))[0] == "203.0.113.9"
    assert peer.resolve(scope("10.0.0.5", {"X-Forwarded-For": "10.2.2.2, 10.1.1.1"}))[0] \
        == "10.2.2.2"
    assert peer.resolve(scope("10.0.0.5", {"X-Forwarded-For": "nonsense, 10.1.1.1"}))[0] \
        is None
    assert peer.resolve(scope("::ffff:203.0.113.5"))[0] == "203.0.113.5"  # IPv4-mapped
    assert peer.resolve(scope("10.0.0.5", {"X-Forwarded-Proto": "https, http"}))[1] is False


def test_write_implies_read() -> None:
    assert expand_scopes(["contacts:write", "forms:read"]) == {
        "contacts:write", "contacts:read", "forms:read"}


def test_requires_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="scope"):
        requires()
    with pytest.raises(ValueError, match="area:action"):
        requires("contacts")

    with pytest.raises(TypeError, match="request"):
        @requires("contacts:read")
        def no_request(x: int) -> None: ...


# -- the middleware against a scripted Keyplane -----------------------------------------------

KEY = tokens.generate("kp")
VERIFIER = tokens.generate("kp")


def valid(**extra: Any) -> dict[str, Any]:
    body = {"valid": True, "code": "VALID", "key_id": "key_1", "tenant_id": "ten_1",
            "owner_id": "prn_1", "kind": "key", "scopes": ["contacts:read"],
            "expires_at": None, "ratelimit": None}
    body.update(extra)
    return body


async def product(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["keyplane"]["key_id"].encode()})


def scripted(answers: Callable[[dict[str, Any]], httpx2.Response]
             ) -> tuple[KeyplaneMiddleware, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["authorization"] == f"Bearer {VERIFIER}"
        if request.url.path == "/v1/changes":
            return httpx2.Response(404)
        body = json.loads(request.content)
        calls.append(body)
        return answers(body)

    mw = KeyplaneMiddleware(product, url="http://keyplane.test", token=VERIFIER,
                            changes="off", transport=httpx2.MockTransport(handler))
    return mw, calls


def get(mw: KeyplaneMiddleware, n: int = 1, **headers: str) -> list[httpx2.Response]:
    async def run() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=mw),
                                      base_url="http://product.test") as client:
            return [await client.get("/x", headers={"Authorization": f"Bearer {KEY}",
                                                    **headers}) for _ in range(n)]
    return asyncio.run(run())


def test_rate_limited_keys_are_verified_on_every_request() -> None:
    remaining = iter(range(2, -100, -1))
    reset_at = int(datetime.now(UTC).timestamp()) + 30

    def answer(body: dict[str, Any]) -> httpx2.Response:
        left = next(remaining)
        rl = {"limit": 3, "remaining": max(left, 0), "reset_at": reset_at}
        if left < 0:
            return httpx2.Response(200, json={**valid(valid=False, code="RATE_LIMITED"),
                                              "ratelimit": rl})
        return httpx2.Response(200, json=valid(ratelimit=rl))

    mw, calls = scripted(answer)
    replies = get(mw, 4)
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    assert len(calls) == 4  # none answered from the cache
    assert replies[0].headers["ratelimit-limit"] == "3"
    assert replies[0].headers["ratelimit-remaining"] == "2"
    refused = replies[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 25 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["ratelimit-remaining"] == "0"


def test_verdicts_are_cached_but_not_past_the_keys_expiry() -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
    mw, calls = scripted(lambda body: httpx2.Response(200, json=valid(expires_at=soon)))
    assert [r.status_code for r in get(mw, 3)] == [200, 200, 200]
    assert len(calls) == 1
    assert calls[0] == {"key": KEY, "ip": "127.0.0.1", "tls": False}

    import time
    time.sleep(0.35)
    get(mw)
    assert len(calls) == 2


def test_denials_are_never_cached_and_map_to_statuses() -> None:
    codes = iter(["REVOKED", "IP_NOT_ALLOWED", "TLS_REQUIRED", "NOT_FOUND"])
    mw, calls = scripted(lambda body: httpx2.Response(200, json=valid(valid=False,
                                                                      code=next(codes))))
    replies = get(mw, 4)
    assert [(r.status_code, r.json()["error"]["code"]) for r in replies] == [
        (401, "invalid_key"), (403, "ip_not_allowed"), (403, "tls_required"),
        (401, "invalid_key")]
    assert len(calls) == 4


@pytest.mark.parametrize("answer", [
    lambda body: httpx2.Response(500, text="oops"),
    lambda body: httpx2.Response(401, json={"error": {"code": "unauthenticated"}}),
    lambda body: httpx2.Response(200, text="not json"),
    lambda body: httpx2.Response(200, json={"unexpected": True}),
])
def test_anything_but_a_verdict_fails_closed(answer: Any) -> None:
    mw, _ = scripted(answer)
    (reply,) = get(mw)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "keyplane_unavailable"


# -- the change follower ----------------------------------------------------------------------

def sse(*events: tuple[str | None, dict[str, Any]]) -> bytes:
    out = ""
    for name, data in events:
        if name:
            out += f"event: {name}\n"
        out += f"data: {json.dumps(data)}\n\n"
    return out.encode()


def test_follower_invalidates_from_events_and_resumes_after_its_position() -> None:
    requests: list[httpx2.Request] = []
    streams = [
        sse(("position", {"position": 7}), (None, {"position": 8, "kind": "key",
                                                   "ref": "key_1"})),
        sse(("position", {"position": 9}), (None, {"position": 9, "kind": "tenant",
                                                   "ref": "ten_2"})),
    ]

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        if streams:
            return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                                   content=streams.pop(0))
        return httpx2.Response(503)

    async def run() -> VerdictCache:
        cache = VerdictCache(100, 30, 1)
        async with httpx2.AsyncClient(base_url="http://k.test",
                                      transport=httpx2.MockTransport(handler)) as http:
            follower = ChangeFollower(http, cache, "sse", min_backoff=0.01)
            cache.set_live(True)
            gen = cache.generation
            cache.put(b"1", ident("key_1"), expires_in=None, generation=gen)
            cache.put(b"2", ident("key_2", tenant="ten_2"), expires_in=None, generation=gen)
            cache.put(b"3", ident("key_3", tenant="ten_3"), expires_in=None, generation=gen)
            follower.start()
            for _ in range(200):
                if len(requests) >= 3:
                    break
                await asyncio.sleep(0.01)
            await follower.stop()
            assert follower.position == 9
        return cache

    cache = asyncio.run(run())
    assert cache.get(b"1") is None and cache.get(b"2") is None
    assert requests[0].headers["accept"] == "text/event-stream"
    assert "after" not in requests[0].url.params
    assert requests[1].url.params["after"] == "8"
    assert requests[2].url.params["after"] == "9"


def test_follower_falls_back_to_long_polling() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.headers.get("accept") == "text/event-stream":
            return httpx2.Response(406)
        after = int(request.url.params.get("after", "-1"))
        if after < 0:
            return httpx2.Response(200, json={"items": [], "position": 3})
        if after == 3:
            return httpx2.Response(200, json={"items": [
                {"position": 4, "kind": "principal", "ref": "prn_1"}], "position": 4})
        return httpx2.Response(200, json={"items": [], "position": after})

    async def run() -> tuple[VerdictCache, ChangeFollower]:
        cache = VerdictCache(100, 30, 1)
        async with httpx2.AsyncClient(base_url="http://k.test",
                                      transport=httpx2.MockTransport(handler)) as http:
            follower = ChangeFollower(http, cache, "sse", poll_wait=0.01)
            cache.put(b"1", ident(), expires_in=None, generation=cache.generation)
            follower.start()
            await asyncio.wait_for(follower.connected.wait(), 5)
            for _ in range(200):
                if follower.position == 4:
                    break
                await asyncio.sleep(0.01)
            await follower.stop()
        return cache, follower

    cache, follower = asyncio.run(run())
    assert follower.mode == "poll"
    assert cache.get(b"1") is None
    polls = [r for r in seen if r.headers.get("accept") != "text/event-stream"]
    assert polls[0].url.params["wait"] == "0"


def test_an_answer_marked_not_cacheable_is_asked_again() -> None:
    mw, calls = scripted(lambda body: httpx2.Response(200, json=valid(cacheable=False)))
    assert [r.status_code for r in get(mw, 3)] == [200, 200, 200]
    assert len(calls) == 3


def test_a_reset_event_drops_everything_even_at_a_lower_position() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                               content=sse(("position", {"position": 3}),
                                           (None, {"position": 3, "kind": "all", "ref": "*"})))

    async def run() -> tuple[VerdictCache, ChangeFollower]:
        cache = VerdictCache(100, 30, 1)
        async with httpx2.AsyncClient(base_url="http://k.test",
                                      transport=httpx2.MockTransport(handler)) as http:
            follower = ChangeFollower(http, cache, "sse")
            follower.position = 50  # the server's database was replaced: its head is lower
            cache.put(b"1", ident(), expires_in=None, generation=cache.generation)
            await follower._follow_sse()
        return cache, follower

    cache, follower = asyncio.run(run())
    assert cache.get(b"1") is None
    assert follower.position == 3


def test_refusals_do_not_accumulate_tracebacks() -> None:
    mw, _ = scripted(lambda body: httpx2.Response(200, json=valid()))

    async def run() -> None:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=mw),
                                      base_url="http://product.test") as client:
            for _ in range(50):
                r = await client.get("/x", headers={"Authorization": "Bearer kp_nope"})
                assert r.status_code == 401

    asyncio.run(run())
    depth, tb = 0, mw._invalid.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    assert depth < 10  # one raise's worth, not fifty


def test_connection_and_app_changes_drop_exactly_their_access_tokens() -> None:
    cache, _ = live_cache()
    gen = cache.generation

    def token(connection: str, app: str | None) -> Any:
        return MappingProxyType({"key_id": connection, "owner_id": "prn_1",
                                 "tenant_id": "ten_1", "scopes": frozenset(),
                                 "kind": "access_token", "app_id": app})

    cache.put(b"key", ident("key_1"), expires_in=None, generation=gen)
    cache.put(b"t1", token("con_1", "app_1"), expires_in=None, generation=gen)
    cache.put(b"t2", token("con_2", "app_1"), expires_in=None, generation=gen)
    cache.put(b"t3", token("con_3", "app_2"), expires_in=None, generation=gen)
    cache.put(b"t4", token("con_4", None), expires_in=None, generation=gen)  # app not named
    assert cache.invalidate("connection", "con_1") == 1
    assert cache.get(b"t1") is None and cache.get(b"t2") is not None
    assert cache.invalidate("app", "app_1") == 2  # its other token, and the unnamed one
    assert cache.get(b"t2") is None and cache.get(b"t4") is None
    assert cache.get(b"t3") is not None and cache.get(b"key") is not None


def run_lifespan(app: Any) -> list[str]:
    """Drive a lifespan through KeyplaneMiddleware(app); returns what the server was sent."""
    mw = KeyplaneMiddleware(app, url="http://127.0.0.1:9", token=tokens.generate("kp"),
                            changes="off", usage_report_seconds=0)
    sent: list[str] = []
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    asyncio.run(mw({"type": "lifespan"}, receive, send))
    return sent


def test_lifespan_is_answered_for_an_app_that_refuses_it() -> None:
    async def django_like(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")

    assert run_lifespan(django_like) == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


def test_an_app_that_fails_its_own_startup_still_fails() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError, match="no database"):
        run_lifespan(failing)
