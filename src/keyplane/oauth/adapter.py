"""The thin adapter between Starlette and Authlib's framework-neutral server core.

Authlib has no Starlette server integration. It needs an :class:`OAuth2Request` (method, URI,
headers, the OAuth parameters and the form) and answers with ``(status, body, headers)``.
:func:`read_request` reads the body on the event loop and builds the request; :func:`to_response`
turns Authlib's triple into a Starlette response. Nothing else crosses the boundary.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
Items = list[tuple[str, str]]


class Payload(OAuth2Payload):  # type: ignore[misc]
    """OAuth parameters from one source (the query of /authorize, the form of /token)."""

    def __init__(self, items: Items) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """An Authlib request built from what Starlette read; free of the event loop."""

    def __init__(self, method: str, uri: str, headers: Headers, query: Items, form: Items,
                 params: Literal["query", "form"]) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = {k: v for k, v in reversed(query)}  # first value wins
        self._form = {k: v for k, v in reversed(form)}
        self.payload = Payload(query if params == "query" else form)
        self.form_items = form  # every value, e.g. the consent page's repeated "scope"
        self.granted_scopes: list[str] | None = None  # set by the consent page

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class BodyTooLarge(ValueError):
    pass


async def read_request(request: Request, *, secure: bool,
                       params: Literal["query", "form"]) -> StarletteOAuth2Request:
    """Read ``request`` into an Authlib request. ``secure``: the request arrived over TLS (as
    judged with the trusted proxies), so Authlib sees an https URI. Raises Authlib's
    ``InsecureTransportError`` for plain http other than loopback."""
    form: Items = []
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and content_type == FORM_TYPE:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise BodyTooLarge("the form is too large")
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    url = request.url.replace(scheme="https") if secure else request.url
    query = parse_qsl(request.url.query, keep_blank_values=True)
    return StarletteOAuth2Request(request.method, str(url), Headers(raw=request.headers.raw),
                                  query, form, params)


@dataclass
class Result:
    """Authlib's ``(status, body, headers)``; ``location`` lets extensions such as RFC 9207's
    issuer parameter amend a redirect."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"]
        self.headers.append(("Location", value))


def to_response(result: Result) -> Response:
    body = result.body
    if isinstance(body, dict | list):
        content = json.dumps(body).encode()
    else:
        content = (body or "").encode() if isinstance(body, str) else bytes(body or b"")
    headers = {k: v for k, v in result.headers}
    if isinstance(result.body, dict | list):
        headers.setdefault("Content-Type", "application/json")
    return Response(content=content, status_code=result.status, headers=headers)
