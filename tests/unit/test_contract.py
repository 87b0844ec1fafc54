"""The error answers /openapi.json gives each operation follow from what it declares."""

from __future__ import annotations

from keyplane.web import contract

BEARER = [{"bearer": []}]


def statuses(method: str, op: dict[str, object]) -> set[int]:
    return {int(s) for s in contract.errors_for(method, op)}


def test_errors_follow_what_the_operation_declares() -> None:
    assert statuses("get", {}) == {400, 431}
    # a call that authenticates reads storage: 503 while the database is unreachable
    assert statuses("get", {"security": BEARER}) == {400, 401, 403, 429, 431, 503}
    listing = {"security": BEARER, "parameters": [{"in": "query", "name": "tenant_id"}]}
    assert statuses("get", listing) == {400, 401, 403, 404, 422, 429, 431, 503}
    edit = {"security": BEARER, "requestBody": {},
            "parameters": [{"in": "path", "name": "key_id"}]}
    assert statuses("patch", edit) == {400, 401, 403, 404, 409, 413, 422, 429, 431, 503}
    guarded = {**edit, "parameters": [{"in": "path", "name": "key_id"},
                                      {"in": "header", "name": "If-Match"}]}
    assert 412 in statuses("post", guarded)


def test_429_names_its_headers_and_every_error_has_one_shape() -> None:
    errors = contract.errors_for("post", {"security": BEARER, "requestBody": {}})
    assert set(errors["429"]["headers"]) == {"Retry-After", "RateLimit-Limit",
                                             "RateLimit-Remaining", "RateLimit-Reset"}
    assert "WWW-Authenticate" in errors["401"]["headers"]
    for spec in errors.values():
        assert spec["content"]["application/json"]["schema"] == contract.ERROR_REF


def test_strings_hold_no_nul_and_scopes_come_from_the_catalogue() -> None:
    schema = {"paths": {}, "components": {"schemas": {"M": {"type": "object", "properties": {
        "free": {"type": "string"},
        "name": {"type": "string", "pattern": "^x$"},
        "scopes": {"type": "array", "items": {"type": "string", "x-keyplane-scopes": "data"}},
        "meta": {"type": "object", "additionalProperties": True},
    }}}}}
    props = contract.document(schema, {"tenant": ("a:read", "keys:write"), "data": ("a:read",)})[
        "components"]["schemas"]["M"]["properties"]
    assert props["free"]["pattern"] == contract.NO_NUL
    assert props["name"]["pattern"] == "^x$"
    assert props["scopes"]["items"]["enum"] == ["a:read"]
    assert props["meta"]["propertyNames"] == {"pattern": contract.NO_NUL}
