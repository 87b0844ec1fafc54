"""uvicorn as ``keyplane serve`` runs it: its httptools protocol, with a bound on the request head.

httptools (llhttp) sets no limit of its own on the request line and headers: uvicorn gathers
the URL, and httptools a header's value, for as long as the client sends them, before the app
sees anything (a 50 MB header made a worker's peak RSS grow by 100 MB). h11, uvicorn's other
parser, stops at ``h11_max_incomplete_event_size`` (16 KiB by default) with a 400. This protocol
drops a connection whose request head is still incomplete after ``HEAD_BUFFER_BYTES`` (counted
per read from the socket, so a read that also ends the previous request's body counts whole),
answering 431; ``keyplane.web.limits`` then holds every request to the exact limits (16 KiB,
100 header fields) whatever server runs the app.

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

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keyplane.web.errors import error_body
from keyplane.web.limits import MAX_HEAD_BYTES

HEAD_BUFFER_BYTES = 4 * MAX_HEAD_BYTES  # 64 KiB
_head_timeout = 10.0


def configure(head_timeout: float) -> None:
    """Sets the request-head deadline (``KEYPLANE_REQUEST_HEAD_TIMEOUT_SECONDS``) for the
    connections this process accepts from now on: the app factory calls it in each worker."""
    global _head_timeout
    _head_timeout = head_timeout


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _in_head = False
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    # uvicorn's own signature narrows asyncio.Protocol's BaseTransport (and ignores it likewise)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._arm_head_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(_head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a response still being sent
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
