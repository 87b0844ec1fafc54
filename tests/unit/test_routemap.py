"""The route map's matching rules (core/routemap.py), as an operator writes them."""

from __future__ import annotations

import pytest

from keyplane.core.errors import ValidationError
from keyplane.core.routemap import RouteMap

KNOWN = {"contacts:read", "contacts:write", "payments:read"}


def scopes_for(table: dict[str, object], method: str, uri: str) -> set[str] | None:
    route = RouteMap.parse(table, KNOWN).match(method, uri)
    return None if route is None else set(route.scopes)


TABLE: dict[str, object] = {
    "GET /contacts": ["contacts:read"],
    "GET /contacts/*": ["contacts:read"],
    "POST /contacts/*": ["contacts:write"],
    "* /contacts/*/notes": ["contacts:write"],
    "GET /contacts/export/*": ["payments:read"],
    "GET /health": [],
}


@pytest.mark.parametrize(("method", "uri", "expected"), [
    ("GET", "/contacts", {"contacts:read"}),
    ("GET", "/contacts?page=2", {"contacts:read"}),  # the query is ignored
    ("HEAD", "/contacts/1", {"contacts:read"}),  # HEAD matches GET entries
    ("GET", "/contacts/1/photos/2", {"contacts:read"}),  # a final /* matches everything below
    ("post", "/contacts/1", {"contacts:write"}),
    ("GET", "/contacts/1/notes", {"contacts:write"}),  # two literal segments beat one
    ("DELETE", "/contacts/1/notes", {"contacts:write"}),  # * is any method
    ("GET", "/contacts/export/all", {"payments:read"}),  # the most literal segments win
    ("GET", "/health", set()),  # mapped to no scope: any valid key
    ("DELETE", "/contacts/1", None),  # unmapped method
    ("GET", "/payments", None),  # unmapped path
    ("GET", "/contacts/", {"contacts:read"}),
    ("GET", "/contacts/../payments", None),  # not canonical: refused, never matched
    ("GET", "/contacts/%2e%2e/payments", None),
    ("GET", "/contacts/1%2Fx", None),
    ("GET", "//contacts/1", None),
    ("GET", "/contacts\\..\\x", None),
    ("GET", "contacts/1", None),
])
def test_matching(method: str, uri: str, expected: set[str] | None) -> None:
    assert scopes_for(TABLE, method, uri) == expected


def test_an_exact_method_beats_any_method() -> None:
    table: dict[str, object] = {"* /a/*": ["contacts:read"], "GET /a/*": ["payments:read"]}
    assert scopes_for(table, "GET", "/a/b") == {"payments:read"}
    assert scopes_for(table, "PUT", "/a/b") == {"contacts:read"}


@pytest.mark.parametrize(("table", "says"), [
    ({"GET /contacts": ["contacts:delete"]}, "unknown scope(s) contacts:delete"),
    ({"get /contacts": []}, "METHOD /path"),
    ({"GET contacts": []}, "METHOD /path"),
    ({"GET /a//b": []}, "non-empty"),
    ({"GET /a/../b": []}, "non-empty"),
    ({"GET /a": "contacts:read"}, "list of scopes"),
    ({"GET /a": ["contacts:read"], " GET  /a": []}, "mapped twice"),
])
def test_a_bad_map_is_refused_naming_the_entry(table: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        RouteMap.parse(table, KNOWN)
    assert says in err.value.message and err.value.field == "route_map"
