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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import httpx2

from keyplane.core import tokens
from keyplane.core.legacy import foreign_shape
from keyplane.sdk._cache import Identity, VerdictCache
from keyplane.sdk._changes import ChangeFollower, Mode
from keyplane.sdk._net import Peer
from keyplane.sdk._responses import Denied, Header, bearer_challenge
from keyplane.sdk._usage import UsageReporter
from keyplane.sdk._version import USER_AGENT

__all__ = ["KeyplaneMiddleware"]

log = logging.getLogger("keyplane.sdk")

MAX_KEY_LENGTH = 256
_INVALID = frozenset({"MALFORMED", "NOT_FOUND", "EXPIRED", "REVOKED", "DISABLED"})


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes and what they imply: ``area:write`` ⇒ ``area:read``."""
    out: set[str] = set()
    for scope in scopes:
        out.add(scope)
        area, sep, action = scope.partition(":")
        if sep and action == "write":
            out.add(f"{area}:read")
    return frozenset(out)


_IDS: dict[str, str] = {}


def _shared(value: Any) -> str | None:
    """One string object per distinct tenant or owner id among cached identities."""
    if value is None:
        return None
    text = str(value)
    found = _IDS.get(text)
    if found is None:
        if len(_IDS) >= 100_000:  # bounded; clearing only costs some sharing
            _IDS.clear()
        found = _IDS.setdefault(text, text)
    return found


def _adding_headers(send: Any, extra: tuple[Header, ...]) -> Any:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped


def _digest(raw: str, ip: str | None, tls: bool) -> bytes:
    """The cache key: SHA-256 of the key with the address and TLS flag it was verified for
    (the secret itself is never kept)."""
    return hashlib.sha256(f"{raw}|{ip}|{'s' if tls else 'p'}".encode()).digest()


@dataclass(frozen=True, slots=True)
class _Result:
    identity: Identity | None = None
    denied: Denied | None = None
    expires_in: float | None = None
    headers: tuple[Header, ...] = ()  # RateLimit-* for a rate-limited key
    cacheable: bool = False
    shareable: bool = True  # may requests waiting on the same key reuse it?


def _ratelimit_headers(info: dict[str, Any]) -> tuple[list[Header], int]:
    """``RateLimit-*`` headers and the seconds until the window resets."""
    reset = 1
    if isinstance(info.get("reset"), int | float):
        reset = max(0, math.ceil(info["reset"]))
    elif isinstance(info.get("reset_at"), int | float):
        reset = max(0, math.ceil(info["reset_at"] - time.time()))
    elif isinstance(info.get("reset_at"), str):
        with contextlib.suppress(ValueError, TypeError):
            at = datetime.fromisoformat(info["reset_at"])
            reset = max(0, math.ceil((at - datetime.now(UTC)).total_seconds()))
    headers = [(b"ratelimit-reset", str(reset).encode())]
    for name in ("limit", "remaining"):
        if isinstance(info.get(name), int):
            headers.append((f"ratelimit-{name}".encode(), str(info[name]).encode()))
    return headers, reset


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
        if not isinstance(token, str) or tokens.parse(token.strip()) is None:
            raise ValueError("KeyplaneMiddleware: token must be a Keyplane verifier key "
                             "(scope keys:verify); the value given is not a well-formed key")
        if changes not in ("sse", "poll", "off"):
            raise ValueError("KeyplaneMiddleware: changes must be 'sse', 'poll' or 'off'")
        self.app = app
        self.url = url.rstrip("/")
        self._token = token.strip()
        self._legacy = frozenset(h.strip().lower().encode("latin-1") for h in legacy_headers
                                 if h.strip())
        self._peer = Peer(trusted_proxies)
        self.cache = VerdictCache(cache_size, cache_ttl, degraded_ttl)
        if changes == "off":
            self.cache.live = True  # TTL only, by the operator's choice
        exempt = [p.strip() for p in exempt_paths if p.strip()]
        self._exempt = frozenset(p for p in exempt if not p.endswith("*"))
        self._exempt_prefixes = tuple(p[:-1] for p in exempt if p.endswith("*"))
        self._mode: Mode = changes
        self._timeout = timeout
        self._prefixes = frozenset(key_prefixes) if key_prefixes is not None else None
        self._imported = imported_keys
        self._realm = realm
        self._transport = transport
        self._http: httpx2.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.follower: ChangeFollower | None = None
        self.usage = UsageReporter(usage_report_seconds)
        self._inflight: dict[bytes, asyncio.Future[_Result]] = {}
        self._scope_sets: dict[frozenset[str], frozenset[str]] = {}
        self._last_error_log = 0.0
        challenge = bearer_challenge(realm)
        self._missing = Denied(401, "missing_key", "an API key is required: send "
                               "'Authorization: Bearer <key>' or 'X-API-Key: <key>'", [challenge])
        # one body for malformed, unknown, expired, revoked and locked keys: no state oracle
        self._invalid = Denied(401, "invalid_key", "the API key is not valid",
                               [bearer_challenge(realm, "invalid_token")])

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        extra: tuple[Header, ...] = ()
        if path in self._exempt or (self._exempt_prefixes
                                    and path.startswith(self._exempt_prefixes)):
            scope["keyplane"] = None
        else:
            try:
                identity, extra = await self._authenticate(scope)
            except Denied as denied:
                await denied.send(scope, send)
                return
            scope["keyplane"] = identity
            state = scope.get("state")
            scope["state"] = {**state, "keyplane": identity} if state else {
                "keyplane": identity}
            if extra:
                send = _adding_headers(send, extra)
        try:  # the app itself, not a helper: one coroutine frame less under every request
            await self.app(scope, receive, send)
        except Denied as denied:
            # from ``requires`` in a dependency: it runs before the endpoint answers anything
            await denied.send(scope, send)

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        seen: set[str] = set()  # lifespan messages received, and those the app sent

        async def receive_wrapper() -> Any:
            message = await receive()
            seen.add(message["type"])
            if message["type"] == "lifespan.startup":
                self._ensure_started()
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
            return message

        async def send_wrapper(message: Any) -> None:
            seen.add(message["type"])
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            if seen & {"lifespan.startup.complete", "lifespan.startup.failed"}:
                raise  # the app speaks lifespan, and failed at it
            # the app does not speak lifespan (Django's ASGI handler refuses it): answer it
            # here, so that the change stream starts and usage is reported at shutdown
            log.debug("the app does not handle lifespan; KeyplaneMiddleware answers it")
            await self._own_lifespan(receive, send, "lifespan.startup" in seen)

    async def _own_lifespan(self, receive: Any, send: Any, started: bool) -> None:
        while True:
            kind = "lifespan.startup" if started else (await receive())["type"]
            started = False
            if kind == "lifespan.startup":
                self._ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- verification ------------------------------------------------------------------------

    def _extract(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        auth = api = legacy = None
        for name, value in headers:
            if name == b"authorization":
                if auth is None:
                    scheme, _, rest = value.partition(b" ")
                    if scheme.lower() == b"bearer" and rest.strip():
                        auth = rest
            elif name == b"x-api-key":
                if api is None and value.strip():
                    api = value
            elif legacy is None and name in self._legacy and value.strip():
                legacy = value
        found = auth or api or legacy
        if found is None:
            return None
        # "<name>:<key>" is accepted too; a key never contains ':'
        return found.decode("latin-1").rpartition(":")[2].strip()

    def verify_cached(self, raw: str, ip: str | None, tls: bool) -> Identity | None:
        """The cache hit path: the identity of a VALID verdict for this key, address and TLS,
        or ``None``. A hit is counted as a use of the key (reported to Keyplane)."""
        identity = self.cache.get(_digest(raw, ip, tls))
        if identity is not None:
            self.usage.pending[identity["key_id"]] += 1
        return identity

    async def _authenticate(self, scope: Any) -> tuple[Identity, tuple[Header, ...]]:
        # refusals are shared instances: each raise starts a fresh traceback (re-raising one
        # instance would otherwise chain every traceback onto it, without bound)
        raw = self._extract(scope["headers"])
        if not raw:
            raise self._missing.with_traceback(None)
        if len(raw) > MAX_KEY_LENGTH:
            raise self._invalid.with_traceback(None)
        ip, tls = self._peer.resolve(scope)
        digest = _digest(raw, ip, tls)
        identity = self.cache.get(digest)
        if identity is not None:  # Keyplane did not see this use: count it for the report
            self.usage.pending[identity["key_id"]] += 1
            return identity, ()
        # a cache hit is a string that passed the checksum before; everything else is
        # checksummed before anything else is asked
        if tokens.prefix_of(raw, self._prefixes) is None and not (
                self._imported and foreign_shape(raw)):
            raise self._invalid.with_traceback(None)
        result = await self._verify(raw, ip, tls, digest)
        if result.denied is not None:
            raise result.denied.with_traceback(None)
        assert result.identity is not None
        return result.identity, result.headers

    async def _verify(self, raw: str, ip: str | None, tls: bool, digest: bytes) -> _Result:
        pending = self._inflight.get(digest)
        if pending is not None:  # the same key is being verified: share the answer
            try:
                result = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise
            else:
                if result.shareable:
                    return result
            return await self._ask(raw, ip, tls)  # a rate-limited key counts every request
        self._ensure_started()
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            generation = self.cache.generation
            result = await self._ask(raw, ip, tls)
            if result.cacheable and result.identity is not None:
                self.cache.put(digest, result.identity, expires_in=result.expires_in,
                               generation=generation)
            future.set_result(result)
            return result
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._inflight[digest]

    async def _ask(self, raw: str, ip: str | None, tls: bool) -> _Result:
        self._ensure_started()
        assert self._http is not None
        try:
            response = await self._http.post("/v1/verify",
                                             json={"key": raw, "ip": ip, "tls": tls})
        except httpx2.HTTPError as exc:
            self._log_unavailable(f"Keyplane is unreachable ({type(exc).__name__})")
            return self._unavailable()
        if response.status_code != 200:
            self._log_unavailable(f"Keyplane answered /v1/verify with HTTP "
                                  f"{response.status_code}; check the verifier key")
            return self._unavailable()
        try:
            return self._result(response.json())
        except (ValueError, KeyError, TypeError):
            self._log_unavailable("Keyplane's /v1/verify answer is not understood")
            return self._unavailable()

    def _result(self, body: dict[str, Any]) -> _Result:
        code = body["code"]
        ratelimit = body.get("ratelimit")
        headers: tuple[Header, ...] = ()
        reset = 1
        if isinstance(ratelimit, dict):
            rl_headers, reset = _ratelimit_headers(ratelimit)
            headers = tuple(rl_headers)
        if body["valid"] is True and code == "VALID":
            identity = MappingProxyType({
                "tenant_id": _shared(body.get("tenant_id")), "key_id": str(body["key_id"]),
                "owner_id": _shared(body.get("owner_id")),
                "scopes": self._scope_set(body.get("scopes") or ()),
                "kind": _shared(body.get("kind") or "key"),
                "app_id": _shared(body.get("app_id")),  # the partner app of an access token
            })
            expires_in = None
            if body.get("expires_at"):
                at = datetime.fromisoformat(body["expires_at"])
                expires_in = (at - datetime.now(UTC)).total_seconds()
            # a rate limit or usage quota counts every request: never answered from here
            counted = ratelimit is not None or body.get("cacheable") is False
            return _Result(identity=identity, expires_in=expires_in, headers=headers,
                           cacheable=not counted, shareable=not counted)
        if code in _INVALID:
            return _Result(denied=self._invalid)
        if code == "IP_NOT_ALLOWED":
            return _Result(denied=Denied(403, "ip_not_allowed",
                                         "this key may not be used from this address"))
        if code == "TLS_REQUIRED":
            return _Result(denied=Denied(403, "tls_required",
                                         "this key may only be used over HTTPS"))
        if code == "INSUFFICIENT_SCOPE":
            return _Result(denied=Denied(403, "insufficient_scope", str(body.get("message")),
                                         [bearer_challenge(self._realm, "insufficient_scope")]))
        if code == "RATE_LIMITED":
            return _Result(denied=Denied(
                429, "rate_limited", "the key's rate limit is exhausted; retry later",
                [(b"retry-after", str(max(1, reset)).encode()), *headers]), shareable=False)
        return _Result(denied=self._invalid)

    def _scope_set(self, scopes: Iterable[str]) -> frozenset[str]:
        """The expanded scopes, one shared object per distinct set (memory per cached key)."""
        expanded = expand_scopes(scopes)
        found = self._scope_sets.get(expanded)
        if found is None:
            if len(self._scope_sets) >= 10_000:
                self._scope_sets.clear()
            found = self._scope_sets.setdefault(expanded, expanded)
        return found

    def _unavailable(self) -> _Result:
        return _Result(denied=Denied(503, "keyplane_unavailable",
                                     "key verification is unavailable; retry shortly",
                                     [(b"retry-after", b"1")]))

    def _log_unavailable(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.error("%s: refusing requests (fail closed)", message)

    # -- lifecycle ---------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._http = httpx2.AsyncClient(
            base_url=self.url, transport=self._transport, timeout=self._timeout,
            headers={"Authorization": f"Bearer {self._token}", "User-Agent": USER_AGENT},
            limits=httpx2.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.follower = ChangeFollower(self._http, self.cache, self._mode)
        self.follower.start()
        self.usage.start(self._http)

    async def aclose(self) -> None:
        """Stop following changes, report the uses not yet reported and close connections
        (done at lifespan shutdown)."""
        follower, http = self.follower, self._http
        self.follower, self._http, self._loop = None, None, None
        if follower is not None:
            await follower.stop()
        await self.usage.stop()
        if http is not None:
            await http.aclose()

    async def wait_live(self, timeout: float = 10.0) -> bool:
        """Wait until the change stream is connected (``False`` on timeout)."""
        self._ensure_started()
        if self.follower is None or self._mode == "off":
            return False
        try:
            await asyncio.wait_for(self.follower.connected.wait(), timeout)
        except TimeoutError:
            return False
        return True
