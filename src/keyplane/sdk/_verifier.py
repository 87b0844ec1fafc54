"""Asking Keyplane whether a key may pass, and remembering the answers that may be reused.

- The cache (:class:`VerdictCache`) holds VALID verdicts only, keyed by a BLAKE2s of the key
  with the client address and TLS flag it was given for; a hit counts as a use of the key
  (reported to Keyplane by the :class:`UsageReporter`).
- Single flight: concurrent requests with the same key, address and TLS wait for one
  ``POST /v1/verify``; a rate-limited or quota-counted key is asked on every request.
- The answer becomes an identity (shared strings and scope sets: memory per cached key) or a
  refusal, from the protocol's code → HTTP status table. Anything but a verdict (Keyplane
  unreachable, an error status, an answer not understood) is 503: it fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import httpx2

from keyplane.sdk._cache import Identity, VerdictCache
from keyplane.sdk._protocol import VALID, expand_scopes, refusal
from keyplane.sdk._responses import Denied, Header, bearer_challenge
from keyplane.sdk._usage import UsageReporter

__all__ = ["Result", "Verifier", "digest"]

log = logging.getLogger("keyplane.sdk")
# BLAKE2s-256 (the standard library's own, not OpenSSL's): the same strength as SHA-256 for
# a cache key, and about a third cheaper for a key's length, on every request
_hash = hashlib.blake2s

_MESSAGES = {
    "ip_not_allowed": "this key may not be used from this address",
    "tls_required": "this key may only be used over HTTPS",
    "rate_limited": "the key's rate limit is exhausted; retry later",
}


def digest(raw: bytes, ip: str | None, tls: bool) -> tuple[bytes, str | None, bool]:
    """The cache key: a BLAKE2s-256 of the key, with the address and TLS flag it was verified
    for (the secret itself is never kept)."""
    return (_hash(raw).digest(), ip, tls)


@dataclass(frozen=True, slots=True)
class Result:
    identity: Identity | None = None
    denied: Denied | None = None
    expires_in: float | None = None
    headers: tuple[Header, ...] = ()  # RateLimit-* for a rate-limited key
    cacheable: bool = False
    shareable: bool = True  # may requests waiting on the same key reuse it?


def ratelimit_headers(info: dict[str, Any]) -> tuple[list[Header], int]:
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


class _Interned:
    """One object per distinct value among cached identities (bounded; clearing only costs
    some sharing)."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._scopes: dict[frozenset[str], frozenset[str]] = {}

    def id(self, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value)
        found = self._ids.get(text)
        if found is None:
            if len(self._ids) >= 100_000:
                self._ids.clear()
            found = self._ids.setdefault(text, text)
        return found

    def scopes(self, scopes: Iterable[str]) -> frozenset[str]:
        expanded = expand_scopes(scopes)
        found = self._scopes.get(expanded)
        if found is None:
            if len(self._scopes) >= 10_000:
                self._scopes.clear()
            found = self._scopes.setdefault(expanded, expanded)
        return found


class Verifier:
    """``connect()`` returns the HTTP client to Keyplane on the running event loop (started on
    first use); ``realm`` goes into the ``WWW-Authenticate`` challenges."""

    def __init__(self, cache: VerdictCache, usage: UsageReporter,
                 connect: Callable[[], httpx2.AsyncClient], realm: str = "api") -> None:
        self.cache = cache
        self._entries = cache.entries
        self._timer = cache.timer
        self.usage = usage
        self._connect = connect
        self._realm = realm
        self._inflight: dict[tuple[bytes, str | None, bool], asyncio.Future[Result]] = {}
        self._interned = _Interned()
        self._last_error_log = 0.0
        # one body for malformed, unknown, expired, revoked and locked keys: no state oracle
        self.invalid = Denied(401, "invalid_key", "the API key is not valid",
                              [bearer_challenge(realm, "invalid_token")])

    def verify_cached(self, raw: bytes, ip: str | None, tls: bool) -> Identity | None:
        """The identity of a cached VALID verdict for ``raw`` from ``ip`` over ``tls``, or
        ``None``. A hit counts as a use of the key (Keyplane did not see it).

        The hot path, in one frame: :func:`digest` and ``VerdictCache.get`` are written out
        here rather than called (a verdict cached under :func:`digest` is found here: the
        caching tests fail otherwise)."""
        key = (_hash(raw).digest(), ip, tls)
        entries = self._entries
        item = entries.get(key)
        if item is None:
            return None
        deadline, identity, key_id = item
        if deadline <= self._timer():
            del entries[key]
            return None
        entries.move_to_end(key)
        self.usage.pending[key_id] += 1
        return identity

    async def verify(self, raw: bytes, ip: str | None, tls: bool) -> Result:
        """Keyplane's answer for ``raw`` from ``ip`` over ``tls``, shared with the requests
        waiting on the same key; a VALID verdict that may be reused is cached."""
        key = digest(raw, ip, tls)
        pending = self._inflight.get(key)
        if pending is not None:  # the same key is being verified: share the answer
            try:
                result = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise
            else:
                if result.shareable:
                    return result
            return await self.ask(raw, ip, tls)  # a rate-limited key counts every request
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            generation = self.cache.generation
            result = await self.ask(raw, ip, tls)
            if result.cacheable and result.identity is not None:
                self.cache.put(key, result.identity, expires_in=result.expires_in,
                               generation=generation)
            future.set_result(result)
            return result
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._inflight[key]

    async def ask(self, raw: bytes, ip: str | None, tls: bool) -> Result:
        """``POST /v1/verify``, never cached nor shared."""
        http = self._connect()
        try:
            body = {"key": raw.decode("latin-1"), "ip": ip, "tls": tls}
            response = await http.post("/v1/verify", json=body)
        except httpx2.HTTPError as exc:
            return self._unavailable(f"Keyplane is unreachable ({type(exc).__name__})")
        if response.status_code != 200:
            return self._unavailable(f"Keyplane answered /v1/verify with HTTP "
                                     f"{response.status_code}; check the verifier key")
        try:
            return self.result(response.json())
        except (ValueError, KeyError, TypeError):
            return self._unavailable("Keyplane's /v1/verify answer is not understood")

    def result(self, body: dict[str, Any]) -> Result:
        """A ``/v1/verify`` answer as an identity to pass, or the refusal to send."""
        code = body["code"]
        ratelimit = body.get("ratelimit")
        headers: tuple[Header, ...] = ()
        reset = 1
        if isinstance(ratelimit, dict):
            rl_headers, reset = ratelimit_headers(ratelimit)
            headers = tuple(rl_headers)
        if body["valid"] is True and code == VALID:
            interned = self._interned
            identity = MappingProxyType({
                "tenant_id": interned.id(body.get("tenant_id")), "key_id": str(body["key_id"]),
                "owner_id": interned.id(body.get("owner_id")),
                "scopes": interned.scopes(body.get("scopes") or ()),
                "kind": interned.id(body.get("kind") or "key"),
                "app_id": interned.id(body.get("app_id")),  # the partner app of an access token
            })
            expires_in = None
            if body.get("expires_at"):
                at = datetime.fromisoformat(body["expires_at"])
                expires_in = (at - datetime.now(UTC)).total_seconds()
            # a rate limit or usage quota counts every request: never answered from here
            counted = ratelimit is not None or body.get("cacheable") is False
            return Result(identity=identity, expires_in=expires_in, headers=headers,
                          cacheable=not counted, shareable=not counted)
        status, error = refusal(str(code))
        if error == "insufficient_scope":
            return Result(denied=Denied(status, error, str(body.get("message")),
                                        [bearer_challenge(self._realm, error)]))
        if status == 429:
            return Result(denied=Denied(status, error, _MESSAGES.get(error, error),
                                        [(b"retry-after", str(max(1, reset)).encode()),
                                         *headers]), shareable=False)
        if status == 401:
            return Result(denied=self.invalid)
        return Result(denied=Denied(status, error, _MESSAGES.get(error, error)))

    def _unavailable(self, message: str) -> Result:
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.error("%s: refusing requests (fail closed)", message)
        return Result(denied=Denied(503, "keyplane_unavailable",
                                    "key verification is unavailable; retry shortly",
                                    [(b"retry-after", b"1")]))
