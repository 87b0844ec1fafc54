"""A real webhook receiver on a loopback port: records every request and checks each one with
the ``standardwebhooks`` library (written by others), as a customer's endpoint would."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests.support import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    started: float
    valid_with: list[bool]  # per configured secret, in order

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body)
        return out

    @property
    def type(self) -> str:
        return str(self.payload["type"])


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    status: int = 200
    delay: float = 0.0
    secrets: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)  # ids received while already in flight
    _inflight: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender died mid-request (SIGKILL): not a delivery
                headers = {k.lower(): v for k, v in self.headers.items()}
                webhook_id = headers.get("webhook-id", "")
                with receiver._lock:
                    if receiver._inflight.get(webhook_id):
                        receiver.overlaps.append(webhook_id)
                    receiver._inflight[webhook_id] = receiver._inflight.get(webhook_id, 0) + 1
                try:
                    valid = []
                    for secret in list(receiver.secrets):
                        try:
                            Webhook(secret).verify(body, headers)
                            valid.append(True)
                        except WebhookVerificationError:
                            valid.append(False)
                    if receiver.delay:
                        time.sleep(receiver.delay)
                    status = receiver.status
                    with receiver._lock:
                        receiver.received.append(Received(headers, body, started, valid))
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                finally:
                    with receiver._lock:
                        receiver._inflight[webhook_id] -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def ids(self) -> set[str]:
        return {r.id for r in self.snapshot()}

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in self.snapshot() if r.type == event_type]
