"""A pure-ASGI fast path for ``POST /v1/verify`` cache hits.

The verification itself costs microseconds; FastAPI's dependency resolution and validation cost
far more. This layer answers the common case — a valid verifier credential and a key, both in
the cache, a well-formed body — directly, with exactly the answer the FastAPI route gives.
Anything else (a cache miss, a bad body, a refused caller, a guess that must be counted, a
throttled address) falls through to the route, which owns every error and every side effect.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import KeyplaneError
from keyplane.core.policy import parse_address, parse_networks
from keyplane.services.auth import caller_from
from keyplane.web import net
from keyplane.web.deps import AUTH_FAILURES, GUESSES, bearer_credential
from keyplane.web.routes_verify import VERIFY_FAILURES, as_seen_by, verdict_out

log = logging.getLogger("keyplane.verify")

PATH = "/v1/verify"
MAX_BODY = 16_384
_FIELDS = frozenset({"key", "scopes", "ip", "tls"})


class VerifyFastPath:
    def __init__(self, app: ASGIApp, keyplane: Keyplane) -> None:
        self.app = app
        self.kp = keyplane
        self.trusted = parse_networks(keyplane.settings.trusted_proxies, "trusted_proxies")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
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
        answer = None
        if not more:
            try:
                answer = self._answer(scope, b"".join(chunks))
            except Exception:  # never fail here: the route will answer, or report the error
                log.exception("verify fast path failed; the route answers instead")
        if answer is None:
            await self.app(scope, _replay(chunks, None if not more else receive), send)
            return
        body = json.dumps(answer, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: Scope, raw_body: bytes) -> dict[str, Any] | None:
        """The route's answer when it can be given from the caches alone, else ``None``."""
        kp = self.kp
        conn = HTTPConnection(scope)
        credential = bearer_credential(conn.headers.get("authorization"))
        if credential is None:
            return None
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
            if kp.throttle.retry_after(VERIFY_FAILURES, ip) is not None:
                return None
        verdict = kp.verifier.verify_cached(
            body["key"].strip().rpartition(":")[2], required=frozenset(body.get("scopes", ())),
            ip=ip, tls=body.get("tls"))
        if verdict is None:
            return None
        verdict = as_seen_by(caller, verdict)
        if ip is not None and verdict.decision.code in GUESSES:
            return None  # the route counts the guess against the address
        return verdict_out(verdict)


def _body(raw: bytes) -> dict[str, Any] | None:
    """The request body if it is exactly what the route's strict model accepts, else None."""
    try:
        body = json.loads(raw)
    except ValueError:
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
