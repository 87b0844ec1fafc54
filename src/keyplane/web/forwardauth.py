"""``/v1/forward-auth``: a reverse proxy asks "may this request pass?" (nginx ``auth_request``,
Traefik ``ForwardAuth``, Caddy ``forward_auth``, Envoy ``ext_authz`` in HTTP mode).

A pure-ASGI layer, like the verify fast path: no body, every method, its input in headers only.

- Who may ask: only a peer whose socket address is in ``KEYPLANE_TRUSTED_PROXIES``. The proxy
  authenticates by where it stands, not by a key: that is the trust the answer needs anyway
  (the client address and TLS come from the proxy's forwarded headers), it works with every
  proxy's stock configuration (Traefik cannot add a secret header to its auth request alone),
  and no secret sits in the proxy's configuration. Anyone else gets 403 ``proxy_not_trusted``.
- The original request: ``X-Forwarded-Method`` + ``X-Forwarded-Uri`` (Traefik, Caddy) or
  ``X-Original-Method`` + ``X-Original-URI`` (nginx); Envoy's ``path_prefix`` form
  (``/v1/forward-auth/<original path>``, with the original method, whatever it is) as well.
  ``/v1/forward-auth`` itself answers the eight methods OpenAPI can name (405 otherwise).
- The credential: the original request's ``Authorization: Bearer [<name>:]<key>``, then
  ``X-API-Key``, then the legacy headers (web/credentials.py).
- The scopes: the route map (core/routemap.py); an unmapped route is refused with 403.
- An optional ``X-Location-Id``: a key of another tenant is then unknown (401).
- The same rules as ``/v1/verify``, from the same service (``VerifyService.answer_proxy``,
  services/verification.py): verifier, caches, usage counting, the one rule for reusing an
  answer, and the guess throttle (guesses are counted per client address in the same count,
  ``verify``). This layer parses the proxy's headers, asks, and encodes the answer.

200 carries ``X-Keyplane-Key-Id``, ``-Tenant-Id``, ``-Owner-Id`` (when set), ``-Scopes``
(space-separated) and ``-Kind``; a refusal is 401 / 403 / 429 with the SDK's bodies and
``WWW-Authenticate`` / ``Retry-After`` + ``RateLimit-*``. Every answer also carries its body in
``X-Keyplane-Error-Body`` (ASCII JSON) and its status in ``X-Keyplane-Status``, for proxies that
build the refusal themselves (nginx).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
import tomllib
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from keyplane.bootstrap import Keyplane
from keyplane.core.decisions import Code
from keyplane.core.errors import ValidationError
from keyplane.core.policy import address_allowed, parse_address, parse_networks
from keyplane.core.routemap import RouteMap
from keyplane.services.verification import THROTTLED, Answer, Peer, VerifyRequest
from keyplane.services.verify import Verdict
from keyplane.web import credentials, net
from keyplane.web.middleware import log_request, new_request_id, response_headers

PATH = "/v1/forward-auth"
REALM = "api"
Headers = list[tuple[bytes, bytes]]
# the status, headers and body, and the service's answer when it gave one (it may be reused)
Decided = tuple[int, Headers, object, Answer | None]
# what an answer depends on besides the caches (with the legacy headers and the peer)
RELEVANT = frozenset({b"authorization", b"x-api-key", b"x-forwarded-for", b"x-forwarded-proto",
                      b"x-forwarded-method", b"x-forwarded-uri", b"x-original-method",
                      b"x-original-uri", b"x-location-id"})


_INVALID = frozenset({Code.MALFORMED, Code.NOT_FOUND, Code.EXPIRED, Code.REVOKED,
                      Code.DISABLED})


def load_route_map(path: Path | None, known: set[str] | frozenset[str]) -> RouteMap:
    """``KEYPLANE_ROUTE_MAP``, read once at start (no file: every route is refused)."""
    if path is None:
        return RouteMap(())
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"KEYPLANE_ROUTE_MAP {path}: cannot be read as TOML ({exc})",
                              field="route_map") from None
    return RouteMap.parse(table, known)


def _challenge(error: str | None = None) -> tuple[bytes, bytes]:
    value = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return (b"www-authenticate", value.encode())


class ForwardAuth:
    def __init__(self, app: ASGIApp, keyplane: Keyplane, routes: RouteMap) -> None:
        self.app = app
        self.kp = keyplane
        self.service = keyplane.verification
        self.routes = routes
        self.trusted = parse_networks(keyplane.settings.trusted_proxies, "trusted_proxies")
        self.legacy = credentials.legacy_names(keyplane.settings.legacy_headers)
        self.relevant = RELEVANT | self.legacy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PATH or path.startswith(PATH + "/")):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = new_request_id()
        status = 500
        try:
            question = self._request_key(scope)
            found = self.service.remembered(question)
            if found is not None:
                status, headers, out = found.status, list(found.headers), found.body
            else:
                status, headers, body, answer = await self._decide(scope, request_id)
                out = json.dumps(body, separators=(",", ":")).encode()
                headers += [(b"x-keyplane-status", str(status).encode())]
                if status != 200:
                    headers.append((b"x-keyplane-error-body", out))
                elif answer is not None:  # a pass, kept if the service says it may be reused
                    self.service.remember(question, out, answer, status, tuple(headers))
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(out)).encode()),
                *response_headers(request_id), *headers]})
            await send({"type": "http.response.body", "body": out})
        finally:
            log_request(scope, status, started, request_id)

    # An exact repeat of a request that passed (same peer, method, path and the headers the
    # answer depends on) is answered from the verification cache's ``answers`` when the
    # service says it may be (VerifyService.remember / remembered), as the verify fast path
    # is: until any invalidation, never past the key's expiry, never for a key whose every use
    # is counted (rate limit, quota), and never once the database is away past its grace. A
    # repeat still counts the key's use and still honours the failure throttle. Refusals are
    # worked out each time.

    def _request_key(self, scope: Scope) -> bytes:
        """A SHA-256 of everything the answer depends on (no secret is kept as a key)."""
        client = scope.get("client")
        parts = [b"fwd", scope["method"].encode(), scope["path"].encode(),
                 (client[0] if client else "").encode(), (scope.get("scheme") or "").encode()]
        relevant = self.relevant
        for name, value in scope["headers"]:
            if name in relevant:
                parts += (name, value)
        return hashlib.sha256(b"".join(
            struct.pack("!I", len(p)) + p for p in parts)).digest()

    async def _decide(self, scope: Scope, request_id: str) -> Decided:
        if scope["path"] == PATH and scope["method"].lower() not in METHODS:
            return _denied(405, "method_not_allowed", "forward-auth answers GET, HEAD, POST, "
                           "PUT, PATCH, DELETE, OPTIONS and TRACE (the original method goes in "
                           "X-Forwarded-Method or X-Original-Method)", [(b"allow", ALLOW)])
        conn = HTTPConnection(scope)
        peer = parse_address(conn.client.host.partition("%")[0] if conn.client else None)
        if peer is None or not self.trusted or not address_allowed(peer, self.trusted):
            return _denied(403, "proxy_not_trusted", "forward-auth answers only the proxies "
                           "in KEYPLANE_TRUSTED_PROXIES")
        headers = conn.headers
        method = headers.get("x-forwarded-method") or headers.get("x-original-method")
        uri = headers.get("x-forwarded-uri") or headers.get("x-original-uri")
        if scope["path"] != PATH:  # Envoy: path_prefix + the original path, original method
            method = method or scope["method"]
            # as sent (still percent-encoded), so that an encoded "/" is refused, not split
            raw_path = scope.get("raw_path")
            sent = raw_path.decode("latin-1") if raw_path else scope["path"]
            uri = uri or sent[len(PATH):]
        if not method or not uri:
            return _denied(403, "route_not_allowed", "the proxy sent no original method and "
                           "URI (X-Forwarded-Method / X-Forwarded-Uri or X-Original-Method / "
                           "X-Original-URI)")
        route = self.routes.match(method, uri)
        if route is None:
            return _denied(403, "route_not_allowed",
                           "no entry of the route map allows this method and path")
        raw = credentials.from_headers(scope["headers"], self.legacy)
        if not raw:
            return _denied(401, "missing_key", "an API key is required: send 'Authorization: "
                           "Bearer <key>' or 'X-API-Key: <key>'", [_challenge()])
        # the client, as the trusted proxy reports it, uses the key
        client = Peer(net.client_address(conn, self.trusted), net.is_tls(conn, self.trusted),
                      request_id)
        location = headers.get("x-location-id")
        question = VerifyRequest(raw, route.scopes,
                                 tenant_id=location.strip() if location is not None else None)
        service = self.service
        answer = service.answer_proxy_if_cached(client, question)
        if answer is None:
            answer = await run_in_threadpool(service.answer_proxy, client, question)
        if answer.retry_after is not None:  # the address is over the failure limit
            return (*_throttled(answer.retry_after, service.throttle.limit), answer)
        return (*_answer(answer.verdict), answer)


def _answer(verdict: Verdict) -> tuple[int, Headers, object]:
    snap = verdict.snapshot
    limits: Headers = []
    reset = 1
    if verdict.ratelimit:
        info = verdict.ratelimit
        if "reset_at" in info:
            reset = max(1, math.ceil(info["reset_at"] - time.time()))
            if snap is not None and snap.ratelimit is not None:
                reset = min(reset, snap.ratelimit[1])  # reset_at is rounded up: never > window
        limits = [(b"ratelimit-limit", str(info.get("limit", 0)).encode()),
                  (b"ratelimit-remaining", str(info.get("remaining", 0)).encode()),
                  (b"ratelimit-reset", str(reset).encode())]
    if verdict.valid and snap is not None:
        # every identity header, empty when there is none: a proxy that copies them onto
        # the upstream request then replaces any the client sent (Traefik, Caddy, nginx)
        identity: Headers = [(b"x-keyplane-key-id", snap.key_id.encode()),
                             (b"x-keyplane-tenant-id", (snap.tenant_id or "").encode()),
                             (b"x-keyplane-owner-id", (snap.owner_id or "").encode()),
                             (b"x-keyplane-scopes", " ".join(sorted(snap.scopes)).encode()),
                             (b"x-keyplane-kind", snap.kind.encode())]
        return 200, identity + limits, {
            "valid": True, "key_id": snap.key_id, "tenant_id": snap.tenant_id,
            "owner_id": snap.owner_id, "scopes": sorted(snap.scopes)}
    code = verdict.decision.code
    if code is Code.IP_NOT_ALLOWED:
        return _refuse(403, "ip_not_allowed", "this key may not be used from this address")
    if code is Code.TLS_REQUIRED:
        return _refuse(403, "tls_required", "this key may only be used over HTTPS")
    if code is Code.INSUFFICIENT_SCOPE:
        return _refuse(403, "insufficient_scope", verdict.decision.reason,
                       [_challenge("insufficient_scope")])
    if code is Code.RATE_LIMITED:
        return _refuse(429, "rate_limited", "the key's rate limit is exhausted; retry later",
                       [(b"retry-after", str(reset).encode()), *limits])
    # unknown, malformed, expired, revoked and locked look alike: no state oracle
    assert code in _INVALID or not verdict.valid
    return _refuse(401, "invalid_key", "the API key is not valid", [_challenge("invalid_token")])


def _throttled(wait: int, limit: int) -> tuple[int, Headers, object]:
    return _refuse(429, "rate_limited", THROTTLED, [
        (b"retry-after", str(wait).encode()), (b"ratelimit-limit", str(limit).encode()),
        (b"ratelimit-remaining", b"0"), (b"ratelimit-reset", str(wait).encode())])


def _denied(status: int, code: str, message: str, headers: Headers | None = None) -> Decided:
    return (*_refuse(status, code, message, headers), None)


def _refuse(status: int, code: str, message: str,
            headers: Headers | None = None) -> tuple[int, Headers, object]:
    return status, list(headers or ()), {"error": {"code": code, "message": message}}


# -- /openapi.json ------------------------------------------------------------------------------

METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
ALLOW = ", ".join(m.upper() for m in METHODS).encode()
_HEADERS = {
    "X-Forwarded-Method": "The original request's method (Traefik, Caddy)",
    "X-Forwarded-Uri": "The original request's URI, query included (Traefik, Caddy)",
    "X-Original-Method": "The original request's method (nginx: $request_method)",
    "X-Original-URI": "The original request's URI (nginx: $request_uri)",
    "X-Forwarded-For": "The client's address, believed from KEYPLANE_TRUSTED_PROXIES only",
    "X-Forwarded-Proto": "https when the client used TLS (from trusted proxies only)",
    "X-API-Key": "The original request's key, when it sent no Authorization: Bearer",
    "X-Location-Id": "Optional: the tenant the key must belong to (else 401)",
}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


def path_item() -> dict[str, Any]:
    """The operation, for every method (it answers any): it is served by this ASGI layer, in
    front of FastAPI's router, so FastAPI cannot describe it itself."""
    from keyplane.web.contract import RETRY_AFTER, WWW_AUTHENTICATE, error

    identity = {
        "X-Keyplane-Key-Id": {**_text("The key's id"), "required": True},
        "X-Keyplane-Tenant-Id": _text("The key's tenant (the Location ID); none for an "
                                      "operator key"),
        "X-Keyplane-Owner-Id": _text("The key's owner (member or service account)"),
        "X-Keyplane-Scopes": {**_text("The key's scopes, space-separated"), "required": True},
    }
    ok = {"type": "object", "properties": {
        "valid": {"type": "boolean"}, "key_id": {"type": "string"},
        "tenant_id": {"type": ["string", "null"]}, "owner_id": {"type": ["string", "null"]},
        "scopes": {"type": "array", "items": {"type": "string"}}}}
    parameters = [{"in": "header", "name": name, "required": False, **_text(text)}
                  for name, text in _HEADERS.items()]
    item = {}
    for method in METHODS:
        item[method] = {
            "tags": ["verify"], "operationId": f"forward_auth_{method}",
            "summary": "May this proxied request pass? (nginx auth_request, Traefik "
                       "ForwardAuth, Caddy forward_auth, Envoy ext_authz)",
            "description": "Answered only to peers in KEYPLANE_TRUSTED_PROXIES (403 "
                           "proxy_not_trusted otherwise). The credential is the original "
                           "request's Authorization: Bearer [<name>:]<key>, X-API-Key or a "
                           "legacy header; the scopes needed come from KEYPLANE_ROUTE_MAP "
                           "(unmapped: 403 route_not_allowed). Any method; Envoy's form "
                           "/v1/forward-auth/<original path> is accepted too.",
            "parameters": parameters,
            "responses": {
                "200": {"description": "The request may pass; who is calling",
                        "headers": identity,
                        "content": {"application/json": {"schema": ok}}},
                "401": error("missing_key or invalid_key (unknown, revoked, expired, locked, "
                             "or of another tenant than X-Location-Id)", WWW_AUTHENTICATE),
                "403": error("insufficient_scope, ip_not_allowed, tls_required, "
                             "route_not_allowed or proxy_not_trusted"),
                "429": error("rate_limited: the key's rate limit, or too many failed "
                             "attempts from this address", RETRY_AFTER),
            },
        }
    return item
