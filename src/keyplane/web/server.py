"""uvicorn as ``keyplane serve`` runs it: its httptools protocol, with a bound on the request head.

httptools (llhttp) sets no limit of its own on the request line and headers: uvicorn gathers
the URL, and httptools a header's value, for as long as the client sends them, before the app
sees anything (a 50 MB header made a worker's peak RSS grow by 100 MB). h11, uvicorn's other
parser, stops at ``h11_max_incomplete_event_size`` (16 KiB by default) with a 400. This protocol
drops a connection whose request head is still incomplete after ``HEAD_BUFFER_BYTES`` (counted
per read from the socket, so a read that also ends the previous request's body counts whole),
answering 431; ``keyplane.web.limits`` then holds every request to the exact limits (16 KiB,
100 header fields) whatever server runs the app.

A ``POST /v1/verify`` whose whole request the app can answer from what it remembered (the
app's ``answer_inline``: ``keyplane.web.app``) is answered here, in the parser's callback, with
one write: no ASGI scope completion, request cycle, event, task, messages or header checks
(about a quarter of what uvicorn spends on a request). Only a request with a
``Content-Length`` of at most ``INLINE_BODY_BYTES`` and nothing queued before it qualifies; its
body is held until complete, and anything the app does not answer (``None``) is handed to
uvicorn's usual cycle exactly as it would have been, body included.

uvicorn sets no deadline on the request head either: a slow-loris client that sends a header a
byte at a time (or opens a connection and sends nothing) keeps its connection for ever. This
protocol answers 408 and closes a connection whose request head is not complete
``KEYPLANE_REQUEST_HEAD_TIMEOUT_SECONDS`` (10 s) after the connection opened or the request
began. Between requests, uvicorn's keep-alive timeout (5 s) closes idle connections. No
connection cap (``limit_concurrency``) is set: a cap is what slow clients would use up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keyplane.web.errors import error_body
from keyplane.web.limits import MAX_HEAD_BYTES, MAX_HEADERS

HEAD_BUFFER_BYTES = 4 * MAX_HEAD_BYTES  # 64 KiB
INLINE_PATH = b"/v1/verify"
INLINE_BODY_BYTES = 16_384
_STATUS_200 = b"HTTP/1.1 200 OK\r\n"
# the app's hook: (scope, body) -> (response body, its headers) or None
InlineAnswer = Callable[[dict[str, Any], bytes], tuple[bytes, list[tuple[bytes, bytes]]] | None]
_head_timeout = 10.0


def configure(head_timeout: float) -> None:
    """Sets the request-head deadline (``KEYPLANE_REQUEST_HEAD_TIMEOUT_SECONDS``) for the
    connections this process accepts from now on: the app factory calls it in each worker."""
    global _head_timeout
    _head_timeout = head_timeout


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One deadline timer per connection, armed when it opens and re-armed only when it fires
    (arming and cancelling one per request cost about 2 µs of each request): a request that
    begins notes the time, and the timer, when it fires, refuses the connection if a head has
    been incomplete for the whole timeout, else sleeps until that head's own deadline."""

    _in_head = False
    _head_bytes = 0
    _head_since = 0.0
    _head_timer: asyncio.TimerHandle | None = None
    _inline: InlineAnswer | None = None
    _held: list[bytes] | None = None  # the body of a request the app may answer inline
    _idle_since: float | None = None  # when the last inline answer left, until a new request
    _idle_timer: asyncio.TimerHandle | None = None

    # uvicorn's own signature narrows asyncio.Protocol's BaseTransport (and ignores it likewise)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._inline = getattr(self.app, "answer_inline", None)
        self._in_head = True  # nothing received yet: the first head is awaited
        self._head_since = self.loop.time()
        self._arm_head_timer(_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._held = None
        self._idle_since = None
        self._in_head = True
        self._head_bytes = 0
        self._head_since = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._inline is not None and self.url == INLINE_PATH and self._may_inline():
            self._held = []  # the cycle waits for the whole body: maybe it is not needed
            return
        super().on_headers_complete()

    def _may_inline(self) -> bool:
        """A ``POST`` with a small announced body, nothing before it still being answered,
        and nothing that needs the cycle (``Expect: 100-continue``, an upgrade, a paused
        writer)."""
        if self.parser.get_method() != b"POST" or self.expect_100_continue or (
                self.cycle is not None and not self.cycle.response_complete) or (
                self.flow.write_paused) or self.parser.should_upgrade():
            return False
        headers = self.headers
        if len(headers) > MAX_HEADERS:
            return False  # the app's limit refuses it
        length = None
        size = len(self.url)
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"content-length":
                if length is not None:
                    return False
                length = value
            elif name == b"transfer-encoding":
                return False
        return size <= MAX_HEAD_BYTES and length is not None and length.isdigit() and (
            int(length) <= INLINE_BODY_BYTES)

    def on_body(self, body: bytes) -> None:
        if self._held is not None:
            self._held.append(body)  # at most the announced length: the parser holds to it
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        held = self._held
        if held is None:
            super().on_message_complete()
            return
        self._held = None
        body = held[0] if len(held) == 1 else b"".join(held)
        scope: Any = self.scope
        scope["method"] = "POST"
        http_version = self.parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"], scope["raw_path"], scope["query_string"] = "/v1/verify", INLINE_PATH, b""
        assert self._inline is not None
        try:
            answer = self._inline(scope, body)
        except Exception:  # the app's own path answers, or reports the error
            self.logger.exception("inline answer failed; the app answers instead")
            answer = None
        if answer is None:  # the usual cycle, as if nothing had been held
            super().on_headers_complete()
            self.cycle.body += body
            self.cycle.more_body = False
            self.cycle.message_event.set()
            return
        content, headers = answer
        out = [_STATUS_200]
        for name, value in self.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        if not keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", content)
        self.transport.write(b"".join(out))
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
            return
        # uvicorn's keep-alive deadline, without a timer armed and cancelled per request
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._idle_since is None or self.transport.is_closing():
            return  # a request since: its own completion sees to the deadline
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

    def _arm_head_timer(self, delay: float) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(delay, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        left = self._head_since + _head_timeout - self.loop.time()
        if not self._in_head or left > 0:  # no head pending, or a later one: its deadline
            self._arm_head_timer(left if self._in_head else _head_timeout)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer(_head_timeout)  # a pipelined head behind a response being sent
            return
        self.logger.info("request head not complete after %gs: connection closed",
                         _head_timeout)
        self._refuse(b"408 Request Timeout", "request_timeout",
                     f"the request head must arrive within {_head_timeout:g} seconds")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_BUFFER_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self.logger.info("request head over %d bytes refused", HEAD_BUFFER_BYTES)
        self._refuse(b"431 Request Header Fields Too Large", "headers_too_large",
                     f"the request target and headers must be at most {MAX_HEAD_BYTES} bytes")

    def _refuse(self, status: bytes, code: str, message: str) -> None:
        self._disarm_head_timer()
        body = json.dumps(error_body(code, message)).encode()
        self.transport.write(b"".join([
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n", body]))
        self.transport.close()
