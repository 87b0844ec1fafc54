"""uvicorn as ``keyplane serve`` runs it: its httptools protocol, with a bound on the request head.

httptools (llhttp) sets no limit of its own on the request line and headers: uvicorn gathers
the URL, and httptools a header's value, for as long as the client sends them, before the app
sees anything (a 50 MB header made a worker's peak RSS grow by 100 MB). h11, uvicorn's other
parser, stops at ``h11_max_incomplete_event_size`` (16 KiB by default) with a 400. This protocol
drops a connection whose request head is still incomplete after ``HEAD_BUFFER_BYTES`` (counted
per read from the socket, so a read that also ends the previous request's body counts whole),
answering 431; ``keyplane.web.limits`` then holds every request to the exact limits (16 KiB,
100 header fields) whatever server runs the app.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keyplane.web.errors import error_body
from keyplane.web.limits import MAX_HEAD_BYTES

HEAD_BUFFER_BYTES = 4 * MAX_HEAD_BYTES  # 64 KiB


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _in_head = False
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_BUFFER_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self.logger.info("request head over %d bytes refused", HEAD_BUFFER_BYTES)
        body = json.dumps(error_body(
            "headers_too_large", f"the request target and headers must be at most "
            f"{MAX_HEAD_BYTES} bytes")).encode()
        self.transport.write(b"".join([
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n", body]))
        self.transport.close()
