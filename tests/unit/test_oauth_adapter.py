"""The Starlette ↔ Authlib adapter: what Authlib sees of a request, and the response it gets
back. Requests are real Starlette requests over ASGI scopes; no server is needed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from authlib.oauth2.rfc6749 import InsecureTransportError
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from starlette.requests import Request

from keyplane.oauth.adapter import BodyTooLarge, Result, read_request, to_response

FORM = "application/x-www-form-urlencoded"


def make_request(method: str, path: str, query: str = "", body: bytes = b"",
                 headers: dict[str, str] | None = None, scheme: str = "http",
                 host: str = "127.0.0.1") -> Request:
    raw_headers = [(b"host", host.encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    chunks = [body[i:i + 10] for i in range(0, len(body), 10)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "headers": raw_headers, "scheme": scheme,
             "server": (host, 443 if scheme == "https" else 80), "client": ("127.0.0.1", 5000),
             "root_path": "", "http_version": "1.1"}
    return Request(scope, receive)


def read(request: Request, **kw: Any) -> Any:
    return asyncio.run(read_request(request, **kw))


def test_authorize_parameters_come_from_the_query() -> None:
    req = read(make_request("GET", "/oauth/authorize",
                            "response_type=code&client_id=cli_1&scope=a%3Aread+b%3Aread"
                            "&state=x&state=y"), secure=False, params="query")
    assert req.method == "GET"
    assert req.payload.client_id == "cli_1"
    assert req.payload.response_type == "code"
    assert req.payload.scope == "a:read b:read"
    assert req.payload.state == "x"  # the first value, and every value is kept:
    assert req.payload.datalist["state"] == ["x", "y"]
    assert req.form == {}


def test_token_parameters_come_from_the_form_and_headers_pass_through() -> None:
    body = b"grant_type=authorization_code&code=abc&redirect_uri=https%3A%2F%2Fa.example%2Fcb"
    req = read(make_request("POST", "/oauth/token", "ignored=1", body,
                            {"Content-Type": FORM + "; charset=utf-8",
                             "Authorization": "Basic Y2xpOnNlY3JldA=="}),
               secure=False, params="form")
    assert req.payload.grant_type == "authorization_code"
    assert req.form["code"] == "abc"
    assert req.payload.redirect_uri == "https://a.example/cb"
    assert req.payload.data.get("ignored") is None
    assert req.args == {"ignored": "1"}
    assert extract_basic_authorization(req.headers) == ("cli", "secret")


def test_a_json_body_is_not_an_oauth_form() -> None:
    req = read(make_request("POST", "/oauth/token", body=b'{"grant_type": "x"}',
                            headers={"Content-Type": "application/json"}),
               secure=False, params="form")
    assert req.payload.grant_type is None


def test_consent_form_keeps_repeated_fields() -> None:
    req = read(make_request("POST", "/oauth/authorize", "client_id=c",
                            b"scope=a%3Aread&scope=b%3Aread&decision=allow",
                            {"Content-Type": FORM}), secure=False, params="query")
    assert req.payload.client_id == "c"
    assert req.form_items == [("scope", "a:read"), ("scope", "b:read"), ("decision", "allow")]


def test_tls_seen_through_a_trusted_proxy_makes_an_https_uri() -> None:
    req = read(make_request("GET", "/oauth/authorize", "a=1", host="keys.example"),
               secure=True, params="query")
    assert req.uri == "https://keys.example/oauth/authorize?a=1"


def test_plain_http_is_refused_except_on_loopback() -> None:
    with pytest.raises(InsecureTransportError):
        read(make_request("GET", "/oauth/authorize", host="keys.example"), secure=False,
             params="query")
    assert read(make_request("GET", "/x", host="127.0.0.1:8080"), secure=False,
                params="query").uri == "http://127.0.0.1:8080/x"


def test_oversized_forms_are_refused() -> None:
    with pytest.raises(BodyTooLarge):
        read(make_request("POST", "/oauth/token", body=b"a=" + b"x" * 70_000,
                          headers={"Content-Type": FORM}), secure=False, params="form")


def test_json_answers_keep_status_and_headers() -> None:
    response = to_response(Result(401, {"error": "invalid_client"}, [
        ("Content-Type", "application/json"), ("Cache-Control", "no-store"),
        ("WWW-Authenticate", 'Basic error="invalid_client"')]))
    assert response.status_code == 401
    assert json.loads(response.body) == {"error": "invalid_client"}
    assert response.headers["www-authenticate"] == 'Basic error="invalid_client"'
    assert response.headers["cache-control"] == "no-store"


def test_redirects_and_their_location() -> None:
    result = Result(302, "", [("Location", "https://a.example/cb?code=1")])
    assert result.location == "https://a.example/cb?code=1"
    result.location = "https://a.example/cb?code=1&iss=x"
    response = to_response(result)
    assert response.status_code == 302
    assert response.headers["location"] == "https://a.example/cb?code=1&iss=x"
    assert response.body == b""
