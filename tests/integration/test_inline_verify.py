"""``keyplane serve``'s protocol (web/server.py) answers a remembered ``POST /v1/verify`` in the
parser's callback, without an ASGI cycle: the same answer as the app's, counted and logged the
same, never past a change, and everything it does not answer reaches the app as it would have
(pipelined requests, bodies in pieces, ``Connection: close``, queries, limits)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.web.app import create_app
from keyplane.web.server import BoundedHttpToolsProtocol
from tests.conftest import Tenant, auth
from tests.support import RunningServer, start_server


class Counted:
    """The app, with its inline answers counted (what the protocol asks, what it got)."""

    def __init__(self, keyplane: Keyplane) -> None:
        self.app: Any = create_app(keyplane, manage_lifecycle=False)
        self.inline = 0
        answer = self.app.answer_inline

        def counted(scope: Any, body: bytes) -> Any:
            found = answer(scope, body)
            self.inline += found is not None
            return found

        self.app.answer_inline = counted


@pytest.fixture
def served(keyplane: Keyplane) -> Iterator[tuple[Counted, RunningServer]]:
    counted = Counted(keyplane)
    running = start_server(counted.app, http=BoundedHttpToolsProtocol, proxy_headers=False)
    try:
        yield counted, running
    finally:
        running.stop()


def issue(keyplane: Keyplane, tenant: Tenant) -> tuple[str, str, str]:
    verifier = keyplane.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                   "require_tls": False}, operator=True)
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"],
        "require_tls": False})
    return verifier.secret, issued.secret, issued.key.id


def raw_request(body: bytes, verifier: str, *, extra: str = "", path: str = "/v1/verify") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {verifier}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def read_responses(sock: socket.socket, n: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """``n`` HTTP responses (each with a Content-Length) read from ``sock``."""
    data, out = b"", []
    deadline = time.monotonic() + 20
    while len(out) < n:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = data[:head_end].split(b"\r\n")
            headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
            end = head_end + 4 + int(headers[b"content-length"])
            if len(data) >= end:
                out.append((lines[0], headers, data[head_end + 4:end]))
                data = data[end:]
                continue
        assert time.monotonic() < deadline, "no complete answer"
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return out


def test_repeats_are_answered_inline_with_the_apps_answer_and_counted(
        served: tuple[Counted, RunningServer], keyplane: Keyplane, tenant: Tenant) -> None:
    counted, running = served
    verifier, secret, key_id = issue(keyplane, tenant)
    body = {"key": secret, "scopes": ["contacts:read"], "ip": "203.0.113.5", "tls": True}
    with httpx2.Client(base_url=running.url, timeout=30) as http:
        answers = [http.post("/v1/verify", json=body, headers=auth(verifier))
                   for _ in range(5)]
    assert counted.inline == 3  # a miss, then an answer remembered, then inline
    assert {r.status_code for r in answers} == {200}
    assert all(r.json() == answers[0].json() for r in answers)
    assert answers[0].json()["code"] == "VALID"
    for r in answers:
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
    assert len({r.headers["x-request-id"] for r in answers}) == 5
    keyplane.usage.flush()
    series = keyplane.usage_reports.series(SYSTEM, tenant.id, key_id, start=None, end=None)
    assert sum(item["count"] for item in series["items"]) == 5


def test_an_inline_answer_never_outlives_a_change(
        served: tuple[Counted, RunningServer], keyplane: Keyplane, tenant: Tenant) -> None:
    counted, running = served
    verifier, secret, key_id = issue(keyplane, tenant)
    with httpx2.Client(base_url=running.url, timeout=30) as http:
        def ask() -> str:
            r = http.post("/v1/verify", json={"key": secret}, headers=auth(verifier))
            assert r.status_code == 200, r.text
            return str(r.json()["code"])

        assert [ask(), ask(), ask()] == ["VALID"] * 3
        assert counted.inline == 1
        keyplane.keys.revoke(SYSTEM, tenant.id, key_id)
        assert [ask(), ask(), ask()] == ["REVOKED"] * 3


def test_pipelined_split_and_closing_requests(
        served: tuple[Counted, RunningServer], keyplane: Keyplane, tenant: Tenant) -> None:
    counted, running = served
    verifier, secret, _ = issue(keyplane, tenant)
    body = json.dumps({"key": secret}).encode()
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(raw_request(body, verifier) + raw_request(body, verifier))
        first = read_responses(sock, 2)
        inline_before = counted.inline
        # three more in one write: all remembered now, answered inline in order
        sock.sendall(raw_request(body, verifier) * 3)
        pipelined = read_responses(sock, 3)
        assert counted.inline == inline_before + 3
        # the head, then the body in two pieces
        request = raw_request(body, verifier)
        cut = request.index(b"\r\n\r\n") + 4
        for piece in (request[:cut], request[cut:cut + 5], request[cut + 5:]):
            sock.sendall(piece)
            time.sleep(0.05)
        split = read_responses(sock, 1)
        assert counted.inline == inline_before + 4
        sock.sendall(raw_request(body, verifier, extra="Connection: close\r\n"))
        closing = read_responses(sock, 1)
        assert sock.recv(10) == b""  # closed after the answer
    answers = first + pipelined + split + closing
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * 7
    assert len({content for _, _, content in answers}) == 1
    assert json.loads(answers[0][2])["code"] == "VALID"
    assert closing[0][1][b"connection"] == b"close"


def test_what_is_not_remembered_or_not_plain_reaches_the_app(
        served: tuple[Counted, RunningServer], keyplane: Keyplane, tenant: Tenant) -> None:
    counted, running = served
    verifier, secret, _ = issue(keyplane, tenant)
    with httpx2.Client(base_url=running.url, timeout=30) as http:
        for _ in range(3):
            assert http.post("/v1/verify", json={"key": secret},
                             headers=auth(verifier)).status_code == 200
        inline = counted.inline
        assert inline == 1
        # a credential in the query is refused by the app, never answered inline
        r = http.post("/v1/verify?api_key=x", json={"key": secret}, headers=auth(verifier))
        assert r.status_code == 400 and r.json()["error"]["code"] == "credential_in_url"
        # too many header fields: the app's limit answers
        many = {**auth(verifier), **{f"x-h{i}": "v" for i in range(120)}}
        r = http.post("/v1/verify", json={"key": secret}, headers=many)
        assert r.status_code == 431
        r = http.post("/v1/verify", json={"key": secret},
                      headers={**auth(verifier), "x-pad": "p" * 20_000})
        assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
        # no credential, a wrong credential, a wrong key: the route's answers
        assert http.post("/v1/verify", json={"key": secret}).status_code == 401
        assert http.post("/v1/verify", json={"key": secret},
                         headers=auth(verifier + "x")).status_code == 401
        r = http.post("/v1/verify", json={"key": secret + "x"}, headers=auth(verifier))
        assert r.status_code == 200 and r.json()["code"] != "VALID"
        # a body without a length (chunked) goes the usual way, and is answered the same
        r = http.post("/v1/verify", content=iter([json.dumps({"key": secret}).encode()]),
                      headers={**auth(verifier), "Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["code"] == "VALID"
        assert counted.inline == inline


def test_a_connection_idle_after_inline_answers_is_closed_at_the_keep_alive_timeout(
        keyplane: Keyplane, tenant: Tenant) -> None:
    counted = Counted(keyplane)
    running = start_server(counted.app, http=BoundedHttpToolsProtocol, proxy_headers=False,
                           timeout_keep_alive=1)
    try:
        verifier, secret, _ = issue(keyplane, tenant)
        body = json.dumps({"key": secret}).encode()
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            for _ in range(3):  # a miss, a remembered answer, an inline one
                sock.sendall(raw_request(body, verifier))
                assert read_responses(sock, 1)[0][0] == b"HTTP/1.1 200 OK"
            assert counted.inline == 1
            time.sleep(0.6)  # still open within the timeout: one more inline answer
            sock.sendall(raw_request(body, verifier))
            assert read_responses(sock, 1)[0][0] == b"HTTP/1.1 200 OK"
            assert counted.inline == 2
            started = time.monotonic()
            assert sock.recv(10) == b""  # then closed by the server, about 1 s later
            assert 0.5 < time.monotonic() - started < 10
    finally:
        running.stop()
