"""``KeyplaneMiddleware``: protect any ASGI app (Starlette, FastAPI, Django's ASGI app).

    app.add_middleware(KeyplaneMiddleware, url="http://127.0.0.1:8080", token=VERIFIER_KEY)

For each HTTP or WebSocket request it

1. reads the key from ``Authorization: Bearer <key>``, ``Authorization: Bearer <name>:<key>``,
   ``X-API-Key`` or one of ``legacy_headers`` (in that order);
2. takes the client address and TLS from the socket (forwarded headers only from
   ``trusted_proxies``);
3. answers from its cache of VALID verdicts, or refuses a malformed key offline (checksum), or
   asks Keyplane (``POST /v1/verify``);
4. puts ``{"tenant_id", "key_id", "owner_id", "scopes", "kind", "app_id"}`` in
   ``scope["keyplane"]`` and ``request.state.keyplane``, or answers 401 / 403 / 429 as
   ``{"error": {"code", "message"}}``.

It fails closed: if Keyplane cannot be reached the request gets 503, never a pass.
Keys with a rate limit or a usage quota (the answer's ``ratelimit`` is set, or ``cacheable`` is
false) are verified on every request: Keyplane counts every use.

This module only wires the parts and runs the per-request path. Each step has its own module:
``_credentials`` (where the key is, and whether it is well-formed), ``_peer`` (client address
and TLS behind trusted proxies), ``_verifier`` (the verdict cache, single flight, ``/v1/verify``
and its answers), ``_lifespan`` (the HTTP client, change follower and usage reporter, started
and stopped with the app) and ``_protocol`` (Keyplane's rules the SDK needs, checked against
the server's by ``tests/sdk/test_protocol_contract.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

import httpx2

from keyplane.sdk._cache import Identity, VerdictCache
from keyplane.sdk._changes import ChangeFollower, Mode
from keyplane.sdk._credentials import MAX_KEY_LENGTH, Credentials
from keyplane.sdk._lifespan import Runtime, serve_lifespan
from keyplane.sdk._peer import Peer
from keyplane.sdk._protocol import prefix_of
from keyplane.sdk._responses import Denied, Header, bearer_challenge
from keyplane.sdk._usage import UsageReporter
from keyplane.sdk._verifier import Verifier

__all__ = ["KeyplaneMiddleware"]


def _adding_headers(send: Any, extra: tuple[Header, ...]) -> Any:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped


class KeyplaneMiddleware:
    """Pure ASGI middleware verifying API keys with Keyplane.

    ``url``: Keyplane's base URL. ``token``: a verifier credential (scope ``keys:verify``).
    ``legacy_headers``: extra header names that may carry the key. ``trusted_proxies``: CIDRs
    whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed. ``cache_ttl``: the longest a
    VALID verdict is reused while the change stream is live (``degraded_ttl`` while it is not).
    ``cache_size``: bound of the LRU. ``exempt_paths``: paths served without a key (``"/x/*"``
    for a prefix). ``changes``: ``"sse"`` (default, falls back to long poll), ``"poll"`` or
    ``"off"`` (TTL only). ``key_prefixes``: accepted key prefixes (default: any well-formed).
    ``imported_keys``: also ask Keyplane about keys that are not in its format (keys brought
    in by ``keyplane import`` keep their own format, e.g. ``prefix.secret``); other keys are
    still refused offline by their checksum.
    ``usage_report_seconds``: how often the uses answered from the cache are reported to
    Keyplane (``POST /v1/usage``; also at shutdown; 0: only at shutdown).
    ``transport``: an httpx2 async transport (tests).
    """

    #: The cache hit path, ``verify_cached(raw, ip, tls)``: the identity of a cached VALID
    #: verdict for this key (its bytes), client address and TLS, or ``None``. A hit counts as
    #: a use of the key (reported to Keyplane). The verifier's own method: no call in between.
    verify_cached: Callable[[bytes, str | None, bool], Identity | None]

    def __init__(
        self,
        app: Any,
        url: str,
        token: str,
        *,
        legacy_headers: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        cache_ttl: float = 30.0,
        cache_size: int = 10_000,
        exempt_paths: Iterable[str] = (),
        degraded_ttl: float = 1.0,
        changes: Mode = "sse",
        timeout: float = 5.0,
        key_prefixes: Collection[str] | None = None,
        realm: str = "api",
        usage_report_seconds: float = 5.0,
        imported_keys: bool = False,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("KeyplaneMiddleware: url must be Keyplane's http(s):// base URL")
        if not isinstance(token, str) or prefix_of(token.strip()) is None:
            raise ValueError("KeyplaneMiddleware: token must be a Keyplane verifier key "
                             "(scope keys:verify); the value given is not a well-formed key")
        if changes not in ("sse", "poll", "off"):
            raise ValueError("KeyplaneMiddleware: changes must be 'sse', 'poll' or 'off'")
        self.app = app
        self.url = url.rstrip("/")
        self.cache = VerdictCache(cache_size, cache_ttl, degraded_ttl)
        if changes == "off":
            self.cache.live = True  # TTL only, by the operator's choice
        self.usage = UsageReporter(usage_report_seconds)
        self.runtime = Runtime(self.url, token.strip(), cache=self.cache, usage=self.usage,
                               mode=changes, timeout=timeout, transport=transport)
        self.verifier = Verifier(self.cache, self.usage, self.runtime.connect, realm)
        credentials = Credentials(legacy_headers, key_prefixes, imported_keys)
        exempt = [p.strip() for p in exempt_paths if p.strip()]
        self._exempt = frozenset(p for p in exempt if not p.endswith("*"))
        self._exempt_prefixes = tuple(p[:-1] for p in exempt if p.endswith("*"))
        # the hot path's steps, bound once
        self._extract = credentials.extract
        self._well_formed = credentials.well_formed
        self._resolve = Peer(trusted_proxies).resolve
        self.verify_cached = self.verifier.verify_cached
        self._verify = self.verifier.verify
        self._missing = Denied(401, "missing_key", "an API key is required: send "
                               "'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                               [bearer_challenge(realm)])
        self._invalid = self.verifier.invalid

    @property
    def follower(self) -> ChangeFollower | None:
        """The change follower, once started."""
        return self.runtime.follower

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await serve_lifespan(self.app, self.runtime, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in self._exempt or (self._exempt_prefixes
                                    and path.startswith(self._exempt_prefixes)):
            scope["keyplane"] = None
        else:
            # the hit path, written out here (each call or frame is paid on every request):
            # the identity of a cached verdict for this key, client address and TLS
            raw = self._extract(scope["headers"])
            if raw and len(raw) <= MAX_KEY_LENGTH:
                ip, tls = self._resolve(scope)
                identity = self.verify_cached(raw, ip, tls)
            else:
                identity = None
            if identity is None:  # a miss: refused offline, or Keyplane is asked
                try:
                    identity, extra = await self._authenticate(scope)
                except Denied as denied:
                    await denied.send(scope, send)
                    return
                if extra:  # a rate-limited key's RateLimit-* headers
                    send = _adding_headers(send, extra)
            scope["keyplane"] = identity
            state = scope.get("state")
            scope["state"] = {**state, "keyplane": identity} if state else {
                "keyplane": identity}
        try:  # the app itself, not a helper: one coroutine frame less under every request
            await self.app(scope, receive, send)
        except Denied as denied:
            # from ``requires`` in a dependency: it runs before the endpoint answers anything
            await denied.send(scope, send)

    async def _authenticate(self, scope: Any) -> tuple[Identity, tuple[Header, ...]]:
        """After the cache missed (nothing awaited in between, so the cache is as it was):
        refuse offline, or ask Keyplane."""
        # refusals are shared instances: each raise starts a fresh traceback (re-raising one
        # instance would otherwise chain every traceback onto it, without bound)
        raw = self._extract(scope["headers"])
        if not raw:
            raise self._missing.with_traceback(None)
        if len(raw) > MAX_KEY_LENGTH:
            raise self._invalid.with_traceback(None)
        ip, tls = self._resolve(scope)
        # a cache hit is a string that passed the checksum before; everything else is
        # checked before Keyplane is asked
        if not self._well_formed(raw.decode("latin-1")):
            raise self._invalid.with_traceback(None)
        result = await self._verify(raw, ip, tls)
        if result.denied is not None:
            raise result.denied.with_traceback(None)
        assert result.identity is not None
        return result.identity, result.headers

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop following changes, report the uses not yet reported and close connections
        (done at lifespan shutdown)."""
        await self.runtime.aclose()

    async def wait_live(self, timeout: float = 10.0) -> bool:
        """Wait until the change stream is connected (``False`` on timeout)."""
        return await self.runtime.wait_live(timeout)
