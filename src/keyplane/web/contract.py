"""The HTTP contract in /openapi.json: the 4xx answers every operation can give, derived from
what each operation declares (a credential? a body? ids in the path? query parameters? a
write?) in one place rather than copied route by route, all with the one error shape
``{"error": {"code", "message", "field"?}}``. What a route declares itself wins."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from keyplane.core.webhooks import url_pattern

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string",
                     "description": "Stable and machine-readable: not_found, invalid_request …"},
            "message": {"type": "string", "description": "Plain words for a person"},
            "field": {"type": "string", "description": "The field or parameter at fault"},
        },
    }},
}
OAUTH_ERROR = {  # RFC 6749 §5.2: the OAuth endpoints answer in OAuth's own shape
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}


def _seconds(description: str) -> dict[str, Any]:
    """A header every such answer carries (every 429 sends all of them)."""
    return {"description": description, "required": True,
            "schema": {"type": "integer", "minimum": 0}}


RETRY_AFTER = {"Retry-After": _seconds("Seconds to wait before trying again")}
RATELIMIT_HEADERS = {
    **RETRY_AFTER,
    "RateLimit-Limit": _seconds("Requests the limit allows in its window"),
    "RateLimit-Remaining": _seconds("Requests left in the window"),
    "RateLimit-Reset": _seconds("Seconds until the window resets"),
}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": 'Bearer realm="keyplane"',
                                         "schema": {"type": "string"}}}
WRITES = frozenset({"post", "put", "patch", "delete"})


def error(description: str, headers: dict[str, Any] | None = None,
          schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": schema or ERROR_REF}}}
    if headers:
        out["headers"] = headers
    return out


def oauth_errors() -> dict[int | str, dict[str, Any]]:
    """``responses=`` of the OAuth endpoints (token, revocation, introspection)."""
    return {
        400: error("invalid_request, invalid_grant, unsupported_grant_type … (RFC 6749 §5.2)",
                   schema=OAUTH_ERROR),
        401: error("invalid_client: the client did not authenticate", schema=OAUTH_ERROR),
        413: error("The body is larger than KEYPLANE_MAX_BODY_BYTES"),
        429: error("slow_down: too many failed attempts from this address",
                   headers=RETRY_AFTER, schema=OAUTH_ERROR),
    }


def errors_for(method: str, operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The error answers an operation can give, from what it declares."""
    params = operation.get("parameters", [])
    path_ids = any(p.get("in") == "path" for p in params)
    query = {p.get("name") for p in params if p.get("in") == "query"}
    has_body = "requestBody" in operation
    authenticated = bool(operation.get("security"))
    out: dict[int, dict[str, Any]] = {
        400: error("Malformed request: the body is not JSON, the URL holds a NUL character, "
                   "or a credential was sent in the query string"),
        431: error("Too many or too large request headers (headers_too_large)"),
    }
    if has_body:
        out[413] = error("The body is larger than KEYPLANE_MAX_BODY_BYTES (payload_too_large)")
    if has_body or query or path_ids:
        out[422] = error("A field or parameter breaks an input rule (the field is named)")
    if authenticated:
        out[401] = error("No valid credential (Authorization: Bearer <key>)", WWW_AUTHENTICATE)
        out[403] = error("The credential lacks a scope or right this call needs")
        out[429] = error("Too many failed attempts from this address, or over a rate limit",
                         RATELIMIT_HEADERS)
        if path_ids or has_body or "tenant_id" in query:
            out[404] = error("No such object here (or it belongs to another tenant)")
        if any(p.get("in") == "header" and str(p.get("name")).lower() == "if-match"
               for p in params):
            out[412] = error("If-Match names a version that is no longer current")
        out[503] = error("The database is unreachable (database_unavailable): retry shortly; "
                         "verification answers from its cache for "
                         "KEYPLANE_DB_OUTAGE_GRACE_SECONDS first")
        if method in WRITES:
            out[409] = error("Conflicts with the current state (a duplicate name or email, a "
                             "group still in use, a built-in scope, an app's status …)")
    return {str(status): spec for status, spec in sorted(out.items())}


NO_NUL = "^[^\\u0000]*$"  # middleware and bodies refuse NUL in any string (PostgreSQL cannot)

JSON_VALUE = {  # any JSON value whose strings (keys too) hold no NUL
    "anyOf": [
        {"type": "null"}, {"type": "boolean"}, {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "propertyNames": {"pattern": NO_NUL},
         "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ],
}
# scope names by kind, from the catalogue: "tenant" (a tenant's key may hold), "data" (groups
# and apps), "operator" (an operator key may hold)
Scopes = dict[str, tuple[str, ...]]


def document(schema: dict[str, Any], scopes: Scopes | None = None, *,
             webhook_url: str = url_pattern(allow_http=False)) -> dict[str, Any]:
    """Add the error answers to every operation of an OpenAPI document, and the rules every
    string follows (in place); ``webhook_url`` is the URL syntax webhooks accept here."""
    scopes = scopes or {}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    components["JsonValue"] = JSON_VALUE
    # connected apps get tokens through the authorization-code flow (the OAuth routes)
    schema["components"].setdefault("securitySchemes", {})["oauth2"] = {
        "type": "oauth2", "description": "Connected apps: access tokens for a tenant's data",
        "flows": {"authorizationCode": {
            "authorizationUrl": "/oauth/authorize", "tokenUrl": "/oauth/token",
            "refreshUrl": "/oauth/token",
            "scopes": {name: name for name in scopes.get("data", ())}}}}
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, spec in errors_for(method, operation).items():
                responses.setdefault(status, spec)
            if responses.get("422", {}).get("content", {}).get("application/json", {}).get(
                    "schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                responses["422"] = errors_for(method, {"requestBody": {}})["422"]
            for parameter in operation.get("parameters", []):
                _strings(parameter.get("schema", {}), scopes, webhook_url)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    for name, component in components.items():
        if name not in ("Error", "JsonValue"):
            _strings(component, scopes, webhook_url)
    return schema


def _strings(node: Any, scopes: Scopes, webhook_url: str) -> None:
    """Every string without a rule of its own holds no NUL; scope names come from the
    catalogue; free-form objects' keys hold no NUL either."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.pop("x-keyplane-scopes", None)
        if kind is not None:
            item["enum"] = list(scopes.get(kind, ())) or ["(none)"]
        if item.pop("x-keyplane-webhook-url", None):
            item["pattern"] = webhook_url
        if item.get("type") == "string" and not {"pattern", "enum", "format", "const"} & set(item):
            item["pattern"] = NO_NUL
        if item.get("type") == "object" and item.get("additionalProperties") is True:
            item["additionalProperties"] = {"$ref": "#/components/schemas/JsonValue"}
            item["propertyNames"] = {"pattern": NO_NUL}
        stack.extend(v for k, v in item.items() if k not in ("enum", "examples", "default"))


def install(app: FastAPI, scopes: Callable[[], Scopes], *, webhook_url: str) -> None:
    """/openapi.json with the error answers and input rules: FastAPI's own document,
    completed, and made again when the scope catalogue changes."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    made_for: list[Scopes] = []

    def openapi() -> dict[str, Any]:
        current = scopes()
        if app.openapi_schema is None or made_for != [current]:
            app.openapi_schema = None
            app.openapi_schema = document(copy.deepcopy(generate()), current,
                                          webhook_url=webhook_url)
            made_for[:] = [current]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's way to extend its document
