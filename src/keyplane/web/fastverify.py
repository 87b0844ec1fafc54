"""A pure-ASGI fast path for ``POST /v1/verify``: parse, ask the verification service, encode.

FastAPI's dependency resolution and validation cost far more than the verification itself.
This layer reads a well-formed body (exactly what the route's strict model accepts) and asks
services/verification.py ``answer_if_cached``, which owns every rule. When the service can
answer without I/O, this layer encodes and sends the answer; anything else (a bad body, an
error, a step that needs the database or Redis) goes on to the route, with the request's
``Peer``, so that the route continues where the service stopped and counts nothing twice.

An API gateway asks about the same key, from the same end-user address, with the same scopes,
over and over. So the encoded answer to one exact request (the body, the headers that decide the
caller's credential, its address and TLS, known only by their SHA-256) is kept whenever the
service says it may be reused, and given again when the service says it still may be
(``VerifyService.remember`` / ``remembered``): a repeat reads no credential out of its headers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import time
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import KeyplaneError
from keyplane.core.policy import parse_networks
from keyplane.metrics import RequestMetrics
from keyplane.services.verification import Peer, VerifyRequest
from keyplane.web import credentials, net
from keyplane.web.credentials import Presented, key_in
from keyplane.web.deps import PEER
from keyplane.web.middleware import log_request, new_request_id, response_headers
from keyplane.web.routes_verify import answer_out

log = logging.getLogger("keyplane.verify")

PATH = "/v1/verify"
MAX_BODY = 16_384
_FIELDS = frozenset({"key", "scopes", "ip", "tls", "tenant_id"})
_TENANT_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
_LENGTHS = struct.Struct("!7I")  # the length of each part of a request's digest


class VerifyFastPath:
    def __init__(self, app: ASGIApp, keyplane: Keyplane,
                 metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.kp = keyplane
        self.service = keyplane.verification
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
                keyed = _request_key(scope, raw, self.legacy)
                if keyed is not None:
                    request, presented, agent = keyed
                    found = self.service.remembered(request)
                    if found is not None:
                        body = found.body
                        self.metrics.verified(found.reuse.code)
                    elif (credential := credentials.credential_in(presented)) is not None:
                        body = self._answer(scope, raw, request, credential, agent)
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
        cycle (``keyplane.web.server``). Only exact repeats that the verification service says
        may be given again; the rest takes the usual way."""
        if scope.get("query_string"):
            return None
        started = time.perf_counter()
        try:
            keyed = _request_key(scope, raw, self.legacy)
            if keyed is None:
                return None
            found = self.service.remembered(keyed[0])
        except Exception:  # never fail here: the route will answer, or report the error
            log.exception("verify fast path failed; the route answers instead")
            return None
        if found is None:
            return None
        self.metrics.verified(found.reuse.code)
        request_id = new_request_id()
        scope["keyplane.request_id"] = request_id
        log_request(scope, 200, started, request_id, self._latency)
        return found.body, [(b"content-type", b"application/json"),
                            (b"content-length", str(len(found.body)).encode()),
                            *response_headers(request_id)]

    def _answer(self, scope: Scope, raw_body: bytes, request: bytes, credential: str,
                agent: bytes) -> bytes | None:
        """The service's answer when it can be given without I/O, else ``None``."""
        body = _body(raw_body)
        if body is None:
            return None  # the route refuses it (nothing was counted yet)
        conn = HTTPConnection(scope)
        trusted = self.trusted
        peer = scope[PEER] = Peer(net.client_address(conn, trusted), net.is_tls(conn, trusted),
                                  scope.get("keyplane.request_id"),
                                  agent.decode("latin-1") if agent else None)
        question = VerifyRequest(key_in(body["key"]), frozenset(body.get("scopes", ())),
                                 body.get("ip"), body.get("tls"), body.get("tenant_id"))
        service = self.service
        try:
            answer = service.answer_if_cached(credential, peer, question)
        except KeyplaneError:
            return None  # the route raises it again from ``peer``, and answers it
        if answer is None:
            return None  # the route finishes it from a thread
        out = json.dumps(answer_out(answer), separators=(",", ":")).encode()
        self.metrics.verified(answer.code)
        service.remember(request, out, answer)
        return out


def _request_key(scope: Scope, raw_body: bytes,
                 legacy: frozenset[bytes]) -> tuple[bytes, Presented, bytes] | None:
    """A SHA-256 of everything an answer depends on besides the caches, so that no secret is
    kept as a key: the body, the headers that decide the caller's credential (as sent: the
    same headers give the same credential, web/credentials.py) and its address and TLS (the
    first of each, as Starlette reads them); with those headers and the first ``User-Agent``.
    Each part's length goes first: no two different requests share a digest. None for a
    request with an ``X-Location-Id`` header: the route reads and checks it (never answered
    here)."""
    forwarded = proto = agent = b""
    headers = scope["headers"]
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded = forwarded or value
        elif name == b"x-forwarded-proto":
            proto = proto or value
        elif name == b"user-agent":
            agent = agent or value
        elif name == b"x-location-id":
            return None
    found = credentials.presented(headers, legacy)
    auth, api, other = found[0] or b"", found[1] or b"", found[2] or b""
    client = scope.get("client")
    host = client[0].encode() if client else b""
    scheme = (scope.get("scheme") or "").encode()
    lengths = _LENGTHS.pack(len(auth), len(api), len(other), len(forwarded), len(proto),
                            len(host), len(scheme))
    return hashlib.sha256(b"".join(
        (lengths, auth, api, other, forwarded, proto, host, scheme, raw_body))).digest(), \
        found, agent


def _body(raw: bytes) -> dict[str, Any] | None:
    """The request body if it is exactly what the route's strict model accepts, else None."""
    # (``find``, not ``in``: for bytes, ``in`` first tries its operand as an integer and
    # formats a TypeError on every call)
    if raw.find(b"\\ud") >= 0 or raw.find(b"\\uD") >= 0:
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
