"""What one request may make a worker hold, checked before anything parses or authenticates it.

``RequestLimits`` sits in front of every route, the verify fast path included:

- the request head (target and header fields) is at most ``MAX_HEAD_BYTES`` with at most
  ``MAX_HEADERS`` fields, else 431 ``headers_too_large``;
- a body is at most ``max_body_bytes``: a ``Content-Length`` above it is refused at once, and a
  body without one (chunked) is read here, counting, and refused as soon as it passes the
  limit, without reading the rest; 413 ``payload_too_large``. A refusal closes the connection,
  so the rest is never drained.

On the verify hot path this is one pass over the header list and an int comparison (about
1 µs a request, measured in process); the body is never touched when it has a length. The
server has buffered the head before this runs: ``keyplane.web.server`` bounds it while it
arrives.

``JsonDepthLimit`` (behind the fast path, which never answers such bodies) refuses JSON nested
deeper than ``MAX_JSON_DEPTH`` with 400 ``json_too_deep`` before the JSON parser could hit
Python's recursion limit.
"""

from __future__ import annotations

import json
import time
from array import array
from itertools import accumulate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane.web.errors import error_body
from keyplane.web.middleware import log_request, new_request_id, response_headers

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16_384  # the request target plus every header name and value
MAX_JSON_DEPTH = 32
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_headers: int = MAX_HEADERS,
                 max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_headers
        self.max_head = max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            await refuse(scope, send, 431, "headers_too_large",
                         f"a request may carry at most {self.max_headers} header fields")
            return
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        length: bytes | None = None
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"content-length":
                length = value
        if size > self.max_head:
            await refuse(scope, send, 431, "headers_too_large",
                         f"the request target and headers must be at most {self.max_head} "
                         "bytes")
            return
        if length is not None:  # the server delivers no more than it announces
            if not length.isdigit():
                await refuse(scope, send, 400, "invalid_request",
                             "Content-Length must be a number of bytes")
            elif int(length) > self.max_body:
                await self.too_large(scope, send)
            else:
                await self.app(scope, receive, send)
            return
        if scope["method"] in _BODILESS:
            await self.app(scope, receive, send)
            return
        # no length announced (chunked): read it here, counting, and refuse past the limit
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, replay(chunks, message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self.too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay([b"".join(chunks)], receive), send)

    async def too_large(self, scope: Scope, send: Send) -> None:
        await refuse(scope, send, 413, "payload_too_large",
                     f"the request body must be at most {self.max_body} bytes")


class JsonDepthLimit:
    """Refuses JSON bodies nested deeper than ``max_depth`` (forms and bodiless requests pass
    untouched); the body, already bounded by ``RequestLimits``, is handed on whole."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODILESS or not _json_body(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, replay(chunks, message), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if too_deep(body, self.max_depth):
            body = json.dumps(error_body(
                "json_too_deep", f"body: JSON may be nested at most {self.max_depth} levels "
                "deep", "body")).encode()
            await send({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]})  # RequestContext adds the rest
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, replay([body], receive), send)


def _json_body(scope: Scope) -> bool:
    """Would FastAPI parse this body as JSON? (It does when no content type is given.)"""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind: bytes = value.partition(b";")[0].strip().lower()
            return kind.endswith(b"/json") or kind.endswith(b"+json")
    return True


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1, +1, -1, -1 as signed bytes


def too_deep(body: bytes, max_depth: int) -> bool:
    """Is ``body`` nested deeper than ``max_depth`` arrays and objects? Free unless it holds
    more than ``max_depth`` opening brackets; then linear, in C loops (a megabyte of brackets
    costs tens of milliseconds, never a backtracking regular expression). Brackets inside
    strings do not count; in a body that is not JSON the answer only has to be safe: the
    parser refuses such a body before it reaches anything nested deeper than it looked."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    # escapes first (a backslash escapes the next character, left to right), then every
    # other quote opens or closes a string: what is outside strings is every other piece
    structure = b"".join(body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    steps = structure.translate(None, _NOT_BRACKETS).translate(_STEPS)
    if b"\x01" * (max_depth + 1) in steps:
        return True  # the usual attack, found at C speed
    return max(accumulate(array("b", steps)), default=0) > max_depth


def replay(chunks: list[bytes], rest: Receive | Message) -> Receive:
    """A ``receive`` that hands on the body already read, then ``rest``: the real ``receive``
    once the body was read whole, or the message (a disconnect) that cut it short."""
    pending = list(chunks)
    whole = callable(rest)

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk,
                    "more_body": bool(pending) or not whole}
        if callable(rest):
            return await rest()
        return rest

    return receive


async def refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """The usual JSON error, with a request id and an access-log line; the connection is
    closed after it, so a body left unread is never drained."""
    started = scope.get("keyplane.started") or time.perf_counter()
    request_id = scope.get("keyplane.request_id") or new_request_id()
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *response_headers(request_id)]
    if status in (413, 431):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    log_request(scope, status, started, request_id)
