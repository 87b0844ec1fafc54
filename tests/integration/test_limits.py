"""What one request may make a worker hold (issue 8, item 3): bodies, headers and JSON nesting
are refused while they are read, before parsing and before authentication, on every route."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.config import Settings
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.procs import Worker, worker_env
from tests.support import free_port, sqlite_url

LIMIT = 4096  # a small max_body_bytes, so that the functional tests stay fast


def error(r: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    assert r.headers["x-request-id"]
    return err


def chunks_of(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """A streamed (chunked, no Content-Length) request body."""
    for i in range(0, len(body), size):
        yield body[i:i + size]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Keyplane, httpx2.Client, Tenant, str]]:
    with serving(sqlite_url(tmp_path), None, tmp_path, max_body_bytes=LIMIT) as (kp, client):
        kp.catalogue.seed()
        tenant = make_tenant(kp)
        verifier = kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        yield kp, client, tenant, verifier


# -- bodies ------------------------------------------------------------------------------------

def post(url: str, path: str, chunks: Iterable[bytes], *, length: int | None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], int]:
    """POSTs a streamed body over a raw socket (``length`` None: chunked), stopping as soon as
    the server answers; returns (status, JSON body, bytes of body sent)."""
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: {u.netloc}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head.append(f"Content-Length: {length}" if length is not None
                else "Transfer-Encoding: chunked")
    sent = 0
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the answer is there: stop sending
                sock.sendall(chunk if length is not None else
                             b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                if length is None:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read its answer
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read()), sent
    finally:
        sock.close()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: VmHWM restarts from VmRSS


def test_an_unauthenticated_100_mb_body_is_refused_without_the_server_holding_it(
        tmp_path: Path) -> None:
    """The issue's memory test: a 100 MB POST /v1/keys, streamed by the client (which never
    holds it either), with a Content-Length and chunked: 413, and the server's peak RSS grows
    by far less than the body (the limit is the default 1 MiB)."""
    url = sqlite_url(tmp_path)
    data_dir = tmp_path / "data"
    build(Settings(database_url=url, data_dir=data_dir), migrate_db=True).close()
    worker = Worker(worker_env(url, data_dir), tmp_path, "limits").start()
    try:
        assert worker.proc is not None
        pid = worker.proc.pid
        total = 100 * 1024 * 1024
        piece = b"x" * 65_536

        def body() -> Iterator[bytes]:
            yield b'{"name": "'
            for _ in range(total // len(piece)):
                yield piece
            yield b'"}'

        size = total + 12
        for _ in range(2):  # warm up: every code path involved has run once
            assert post(worker.url, "/v1/keys", [b'{"name": "x"}'], length=13)[0] == 401
            assert post(worker.url, "/v1/keys", chunks_of(b"x" * 2_000_000, 65_536),
                        length=None)[0] == 413
        for length in (size, None):
            reset_peak_rss(pid)
            before = peak_rss_kib(pid)
            status, answer, sent = post(worker.url, "/v1/keys", body(), length=length)
            grown_mib = (peak_rss_kib(pid) - before) / 1024
            assert status == 413, answer
            assert answer["error"]["code"] == "payload_too_large"
            assert "1048576 bytes" in answer["error"]["message"]
            assert grown_mib < 2 * 1 + 8, (length, grown_mib)
            assert sent < 16 * 1024 * 1024, sent  # the server stopped reading early
        assert worker.proc.poll() is None
    finally:
        worker.kill()


ROUTES = [  # (path, a body one byte over the limit, content type)
    ("/v1/keys", b'{"name": "' + b"x" * LIMIT + b'"}', "application/json"),
    ("/v1/verify", b'{"key": "' + b"x" * LIMIT + b'"}', "application/json"),
    ("/oauth/token", b"grant_type=client_credentials&x=" + b"x" * LIMIT,
     "application/x-www-form-urlencoded"),
    ("/oauth/revoke", b"token=" + b"x" * LIMIT, "application/x-www-form-urlencoded"),
    ("/signin", b"email=a%40b.c&password=" + b"x" * LIMIT, "application/x-www-form-urlencoded"),
    ("/v1/usage", b'{"uses": []' + b" " * LIMIT + b"}", "application/json"),
]


@pytest.mark.parametrize(("path", "body", "kind"), ROUTES, ids=[r[0] for r in ROUTES])
def test_every_route_refuses_a_body_over_the_limit_before_anything_else(
        served: tuple[Keyplane, httpx2.Client, Tenant, str], path: str, body: bytes,
        kind: str) -> None:
    _, client, tenant, verifier = served
    for headers in ({}, auth(tenant.management_key), auth(verifier)):
        headers = {**headers, "content-type": kind}
        err = error(client.post(path, content=body, headers=headers), 413,
                    "payload_too_large")
        assert f"at most {LIMIT} bytes" in err["message"]
        r = client.post(path, content=chunks_of(body), headers=headers)  # no Content-Length
        error(r, 413, "payload_too_large")


def test_a_body_at_the_limit_is_accepted_with_or_without_a_length(
        served: tuple[Keyplane, httpx2.Client, Tenant, str]) -> None:
    _, client, tenant, verifier = served
    mk = {**auth(tenant.management_key), "content-type": "application/json"}

    def padded(doc: dict[str, Any], size: int) -> bytes:
        raw = json.dumps(doc).encode()
        return raw + b" " * (size - len(raw))  # JSON may end in whitespace

    body = padded({"name": "at the limit", "require_tls": False,
                   "scopes": ["contacts:read"]}, LIMIT)
    r = client.post("/v1/keys", content=body, headers=mk)
    assert r.status_code == 201, r.text
    secret = r.json()["key"]
    r = client.post("/v1/keys", content=chunks_of(body, 700), headers=mk)
    assert r.status_code == 201, r.text
    error(client.post("/v1/keys", content=body + b" ", headers=mk), 413, "payload_too_large")

    verify = padded({"key": secret, "scopes": ["contacts:read"]}, LIMIT)
    for _ in range(3):  # the route, then the fast path (cache hits)
        for content in (verify, chunks_of(verify, 900)):
            r = client.post("/v1/verify", content=content,
                            headers={**auth(verifier), "content-type": "application/json"})
            assert r.status_code == 200 and r.json()["code"] == "VALID", r.text


# -- headers -----------------------------------------------------------------------------------

def test_too_many_or_too_large_headers_are_refused_with_431(
        served: tuple[Keyplane, httpx2.Client, Tenant, str]) -> None:
    _, client, tenant, verifier = served
    mk = auth(tenant.management_key)
    assert client.get("/v1/keys", headers={**mk, "x-pad": "p" * 8000}).status_code == 200
    many = {f"x-h{i}": "1" for i in range(90)}
    assert client.get("/v1/keys", headers={**mk, **many}).status_code == 200

    for headers in ({f"x-h{i}": "1" for i in range(101)}, {"x-pad": "p" * 17_000}):
        for method, path in (("GET", "/v1/keys"), ("POST", "/v1/verify"), ("GET", "/signin")):
            r = client.request(method, path, headers={**auth(verifier), **headers},
                               json={"key": "kp_x"} if method == "POST" else None)
            err = error(r, 431, "headers_too_large")
            assert "100 header fields" in err["message"] or "16384 bytes" in err["message"]
    r = client.get("/v1/keys", params={"q": "q" * 17_000}, headers=mk)  # the target counts too
    error(r, 431, "headers_too_large")


# -- JSON nesting ------------------------------------------------------------------------------

def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_json_nested_too_deep_is_refused_with_a_clean_400(
        served: tuple[Keyplane, httpx2.Client, Tenant, str]) -> None:
    _, client, tenant, verifier = served
    mk = auth(tenant.management_key)
    deep = nested(100_000)[:LIMIT // 2] + nested(100_000)[-LIMIT // 2:]  # under the size limit
    for path, headers in (("/v1/keys", {}), ("/v1/keys", mk), ("/v1/verify", auth(verifier)),
                          ("/v1/usage", mk)):
        for kind in ("application/json", None):
            sent = {**headers, **({"content-type": kind} if kind else {})}
            err = error(client.post(path, content=deep, headers=sent), 400, "json_too_deep")
            assert err["field"] == "body" and "32" in err["message"]
    meta = b'{"name": "deep", "meta": {"a": ' + nested(32) + b"}}"  # 34 levels
    error(client.post("/v1/keys", content=meta, headers={**mk, "content-type":
                                                          "application/json"}),
          400, "json_too_deep")
    brackets_in_text = json.dumps({"name": "[" * 150, "description": "{" * 900,
                                   "scopes": ["contacts:read"]})
    r = client.post("/v1/keys", content=brackets_in_text,
                    headers={**mk, "content-type": "application/json"})
    assert r.status_code == 201, r.text  # brackets inside strings do not nest
    r = client.post("/v1/verify", content=b'{"key": "kp_x", "scopes": ' + nested(20)[:20] +
                    b'"a"' + nested(20)[20:] + b"}",
                    headers={**auth(verifier), "content-type": "application/json"})
    assert r.status_code == 422  # shallow enough: the route's own validation answers


def send_head(url: str, pieces: Iterable[bytes]) -> tuple[int, dict[str, Any]]:
    """Sends a request head piece by piece over a raw socket; the answer (status, JSON)."""
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    try:
        try:
            for piece in pieces:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())
    finally:
        sock.close()


def test_keyplane_serve_never_buffers_a_huge_request_head(tmp_path: Path) -> None:
    """httptools sets no limit on the request line or a header's length: ``keyplane serve``
    drops such a head while it arrives (431), so a 50 MB header costs the worker next to no
    memory; the app's exact limits (16 KiB, 100 fields) apply below that."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env.update(KEYPLANE_DATABASE_URL=sqlite_url(tmp_path), KEYPLANE_DATA_DIR=str(tmp_path))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("keyplane")), "serve", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx2.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        assert httpx2.get(url + "/healthz", headers={"x-pad": "p" * 8000}).status_code == 200
        status, answer = send_head(url, [start, b"x-pad: " + b"p" * 20_000 + b"\r\n\r\n"])
        assert (status, answer["error"]["code"]) == (431, "headers_too_large")  # the app's

        mib = b"a" * 1024 * 1024
        huge_header = [start, b"x-big: ", *(mib for _ in range(50)), b"\r\n\r\n"]
        huge_url = [b"GET /", *(mib for _ in range(50)), b" HTTP/1.1\r\nHost: x\r\n\r\n"]
        for pieces in (huge_header, huge_url):
            reset_peak_rss(proc.pid)
            before = peak_rss_kib(proc.pid)
            status, answer = send_head(url, pieces)
            assert (status, answer["error"]["code"]) == (431, "headers_too_large"), answer
            assert (peak_rss_kib(proc.pid) - before) / 1024 < 8
        assert httpx2.get(url + "/healthz").status_code == 200
    finally:
        proc.kill()
        proc.wait()
