"""A pure-ASGI fast path for ``POST /v1/verify`` cache hits.

The verification itself costs microseconds; FastAPI's dependency resolution and validation cost
far more. This layer answers the common case — a valid verifier credential and a key, both in
the cache, a well-formed body — directly, with exactly the answer the FastAPI route gives.
Anything else (a cache miss, a bad body, a refused caller, a guess that must be counted, a
throttled address) falls through to the route, which owns every error and every side effect.

An API gateway asks about the same key, from the same end-user address, with the same scopes,
over and over. So the encoded answer to one exact request (the body, the caller's credential
and what decides its address and TLS, known only by their SHA-256) is remembered in the
verification cache's ``answers``: until any invalidation, until the first of the two cached
snapshots it was computed from expires, and never past either key's expiry. A remembered
answer still counts both keys' usage and still honours the failure throttle; answers that
depend on a counter (a rate limit or a usage quota on either key) or that must be counted as a
guess are never remembered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import time
from datetime import datetime
from typing import Any, NamedTuple

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import KeyplaneError
from keyplane.core.policy import Address, parse_address, parse_networks
from keyplane.metrics import RequestMetrics
from keyplane.services.auth import caller_from
from keyplane.services.usage import NO_SCOPES
from keyplane.services.verify import cache_key
from keyplane.web import credentials, net
from keyplane.web.credentials import key_in
from keyplane.web.deps import AUTH_FAILURES, GUESSES
from keyplane.web.middleware import log_request, new_request_id, response_headers
from keyplane.web.routes_verify import VERIFY_FAILURES, as_seen_by, at_location, verdict_out

log = logging.getLogger("keyplane.verify")

PATH = "/v1/verify"
MAX_BODY = 16_384
_FIELDS = frozenset({"key", "scopes", "ip", "tls", "tenant_id"})
_TENANT_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
_OUTCOME_VALID = "VALID"
_LENGTHS = struct.Struct("!5I")  # the length of each part of a request's digest


class RememberedAnswer(NamedTuple):
    """An answer given before, and what a repeat must still do: count both keys' usage, and
    refuse to repeat it past an expiry or for an address the failure throttle now blocks."""

    body: bytes
    caller_key_id: str
    key_id: str
    outcome: str
    expires_at: datetime | None
    caller_ip: Address | None
    subject: Address | None  # whose guesses /v1/verify counts: ``ip``, else the caller's
    code: str  # the answer's code, for /metrics
    ip: Address | None  # the end user's address the body named (where the key was used)
    scopes: frozenset[str]  # what a valid answer needed: counted per scope
    reason: str | None = None  # a refusal's reason, remembered for the key's page


class VerifyFastPath:
    def __init__(self, app: ASGIApp, keyplane: Keyplane,
                 metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.kp = keyplane
        self.metrics = metrics or RequestMetrics()
        self._latency = self.metrics.row("POST", PATH)
        self.trusted = parse_networks(keyplane.settings.trusted_proxies, "trusted_proxies")
        self.legacy = credentials.legacy_names(keyplane.settings.legacy_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or \
                scope.get("query_string"):
            await self.app(scope, receive, send)  # RequestContext refuses what it must
            return
        started = time.perf_counter()
        request_id = new_request_id()
        scope["keyplane.request_id"] = request_id  # RequestContext keeps both if it answers
        scope["keyplane.started"] = started
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message), send)  # disconnects and the like
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > MAX_BODY:
                break
        body = None
        if not more:
            raw = chunk if len(chunks) == 1 else b"".join(chunks)  # one chunk, usually
            try:
                request, credential = _request_key(scope, raw, self.legacy)
                if credential is not None and not _names_a_location(scope):
                    body = self._remembered(request)
                    if body is None:
                        body = self._answer(scope, raw, request, credential)
            except Exception:  # never fail here: the route will answer, or report the error
                log.exception("verify fast path failed; the route answers instead")
        if body is None:
            await self.app(scope, _replay(chunks, None if not more else receive), send)
            return
        status = 500
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), *response_headers(request_id),
            ]})
            await send({"type": "http.response.body", "body": body})
            status = 200
        finally:
            log_request(scope, status, started, request_id, self._latency)

    def answer_inline(self, scope: Scope,
                      raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """The remembered answer to this whole request (body and headers), counted and
        logged as ``__call__`` does, or None: for a server that answers without an ASGI
        cycle (``keyplane.web.server``). Only exact repeats: the rest takes the usual way."""
        if scope.get("query_string"):
            return None
        started = time.perf_counter()
        try:
            request, credential = _request_key(scope, raw, self.legacy)
            if credential is None or _names_a_location(scope):
                return None
            body = self._remembered(request)
        except Exception:  # never fail here: the route will answer, or report the error
            log.exception("verify fast path failed; the route answers instead")
            return None
        if body is None:
            return None
        request_id = new_request_id()
        scope["keyplane.request_id"] = request_id
        log_request(scope, 200, started, request_id, self._latency)
        return body, [(b"content-type", b"application/json"),
                      (b"content-length", str(len(body)).encode()),
                      *response_headers(request_id)]

    def _remembered(self, request: bytes) -> bytes | None:
        """The answer to this exact request if it was given before and still holds."""
        kp = self.kp
        cache = kp.verifier.cache
        if not kp.verifier.cache_trusted():
            return None  # a database outage past its grace: the route fails closed
        found: RememberedAnswer | None = cache.remembered(cache.answers, request)
        if found is None:
            return None
        now = kp.ctx.clock.now()
        if found.expires_at is not None and now >= found.expires_at:
            return None
        throttle = kp.throttle
        if throttle.blocking and (
                throttle.retry_after(AUTH_FAILURES, found.caller_ip) is not None
                or throttle.retry_after(VERIFY_FAILURES, found.subject) is not None):
            return None
        record = kp.usage.record
        record(found.caller_key_id, now, _OUTCOME_VALID, ip=found.caller_ip)
        record(found.key_id, now, found.outcome, 1, found.scopes, ip=found.ip,
               reason=found.reason)
        kp.verifier.cache_hits += 2  # both credentials, answered from the cache
        self.metrics.verified(found.code)
        return found.body

    def _answer(self, scope: Scope, raw_body: bytes, request: bytes,
                credential: str) -> bytes | None:
        """The route's answer when it can be given from the caches alone, else ``None``."""
        kp = self.kp
        generation = kp.verifier.cache.generation  # before anything is read from the cache
        conn = HTTPConnection(scope)
        trusted = self.trusted
        caller_ip = net.client_address(conn, trusted)
        if kp.throttle.retry_after(AUTH_FAILURES, caller_ip) is not None:
            return None
        seen = kp.verifier.verify_cached(credential, ip=caller_ip,
                                         tls=net.is_tls(conn, trusted))
        if seen is None or not seen.valid:
            return None
        try:
            caller = caller_from(seen, ip=caller_ip,
                                 request_id=scope.get("keyplane.request_id"))
        except KeyplaneError:
            return None
        if not caller.holds("keys:verify"):
            return None
        body = _body(raw_body)
        if body is None:
            return None
        ip = None
        if body.get("ip") is not None:
            ip = parse_address(body["ip"])
            if ip is None:
                return None
        subject = ip if ip is not None else caller_ip
        if kp.throttle.retry_after(VERIFY_FAILURES, subject) is not None:
            return None
        key = key_in(body["key"])
        required = frozenset(body.get("scopes", ()))
        verdict = kp.verifier.verify_cached(key, required=required, ip=ip, tls=body.get("tls"))
        if verdict is None:
            return None
        verdict = at_location(as_seen_by(caller, verdict), body.get("tenant_id"))
        if verdict.decision.code in GUESSES:
            return None  # the route counts the guess against the address
        code = verdict.decision.code.value
        out = json.dumps(verdict_out(verdict), separators=(",", ":")).encode()
        self.metrics.verified(code)
        assert seen.snapshot is not None
        if not seen.snapshot.counted and verdict.snapshot is not None and not (
                verdict.snapshot.counted) and verdict.decision.code not in GUESSES:
            expiries = [s.expires_at for s in (seen.snapshot, verdict.snapshot)
                        if s.expires_at is not None]
            expires_at = min(expiries) if expiries else None
            # an answer given after an expiry would be wrong before it (clocks can step back)
            if expires_at is None or kp.ctx.clock.now() < expires_at:
                cache = kp.verifier.cache
                cache.remember(cache.answers, request, RememberedAnswer(
                    out, seen.snapshot.key_id, verdict.snapshot.key_id,
                    verdict.decision.code.value, expires_at, caller_ip, subject, code, ip,
                    required if verdict.decision.valid else NO_SCOPES,
                    None if verdict.decision.valid else verdict.decision.reason),
                    generation, (cache_key(credential), cache_key(key)))
        return out


def _request_key(scope: Scope, raw_body: bytes,
                 legacy: frozenset[bytes]) -> tuple[bytes, str | None]:
    """A SHA-256 of everything an answer depends on besides the caches (the body, the caller's
    credential, and what decides the caller's address and TLS: the first of each header, as
    Starlette reads them), so that no secret is kept as a key, and the caller's credential
    (read as the route reads it: web/credentials.py). Each part's length goes first: no two
    different requests share a digest."""
    forwarded = proto = b""
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded = forwarded or value
        elif name == b"x-forwarded-proto":
            proto = proto or value
    credential = credentials.from_headers(scope["headers"], legacy)
    auth = credential.encode() if credential is not None else b""
    client = scope.get("client")
    host = client[0].encode() if client else b""
    scheme = (scope.get("scheme") or "").encode()
    lengths = _LENGTHS.pack(len(auth), len(forwarded), len(proto), len(host), len(scheme))
    return hashlib.sha256(
        b"".join((lengths, auth, forwarded, proto, host, scheme, raw_body))).digest(), credential


def _names_a_location(scope: Scope) -> bool:
    """An ``X-Location-Id`` header: the route reads and checks it (never answered here)."""
    return any(name == b"x-location-id" for name, _ in scope["headers"])


def _body(raw: bytes) -> dict[str, Any] | None:
    """The request body if it is exactly what the route's strict model accepts, else None."""
    if b"\\ud" in raw or b"\\uD" in raw:
        return None  # maybe an unpaired surrogate, which no text can hold: the route refuses it
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or not _FIELDS.issuperset(body):
        return None
    key, scopes, ip, tls = body.get("key"), body.get("scopes", []), body.get("ip"), body.get("tls")
    if not isinstance(key, str) or len(key) > 400:
        return None
    if not isinstance(scopes, list) or len(scopes) > 50 or not all(
            isinstance(s, str) for s in scopes):
        return None
    if ip is not None and (not isinstance(ip, str) or len(ip) > 64):
        return None
    if tls is not None and not isinstance(tls, bool):
        return None
    tenant_id = body.get("tenant_id")
    if tenant_id is not None and not (isinstance(tenant_id, str)
                                      and _TENANT_ID.fullmatch(tenant_id)):
        return None
    if "\x00" in key or any("\x00" in s for s in scopes):
        return None
    return body


def _replay(chunks: list[bytes], rest: Receive | Message | None) -> Receive:
    """A ``receive`` that hands the route the body this layer already read."""
    pending = list(chunks)

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk,
                    "more_body": bool(pending) or callable(rest)}
        if callable(rest):
            return await rest()
        if isinstance(rest, dict):
            return rest
        return {"type": "http.disconnect"}

    return receive
