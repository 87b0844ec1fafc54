"""Scopes: ``area:action`` names, write ⇒ read, and the operator's catalogue."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.core import scopes as sc
from keyplane.core.scopes import Catalogue

AREAS = ["contacts", "calendars", "conversations", "opportunities", "forms", "payments"]


def test_write_implies_read_and_not_the_reverse() -> None:
    assert sc.implied("contacts:write") == {"contacts:write", "contacts:read"}
    assert sc.implied("contacts:read") == {"contacts:read"}
    assert sc.expand(["contacts:write"]) == {"contacts:write", "contacts:read"}
    assert sc.satisfies(["contacts:write"], ["contacts:read"])
    assert sc.satisfies(["contacts:write"], ["contacts:read", "contacts:write"])
    assert not sc.satisfies(["contacts:read"], ["contacts:write"])
    assert not sc.satisfies(["contacts:write"], ["calendars:read"])  # never across areas
    assert sc.satisfies([], [])
    assert sc.implied("keys:verify") == {"keys:verify"}


@given(st.lists(st.sampled_from(sorted(sc.default_catalogue()))))
def test_expand_is_idempotent_and_a_superset(scopes: list[str]) -> None:
    once = sc.expand(scopes)
    assert once >= set(scopes)
    assert sc.expand(once) == once
    for s in scopes:
        if s.endswith(":write"):
            assert s.replace(":write", ":read") in once


def test_default_catalogue_has_the_seeded_areas_and_management_scopes() -> None:
    cat = Catalogue()
    for area in AREAS:
        assert f"{area}:read" in cat
        assert f"{area}:write" in cat
    for s in ("keys:read", "keys:write", "keys:verify", "members:read", "members:write",
              "tenant:read", "tenant:write", "platform:read", "platform:write"):
        assert s in cat
        assert sc.is_management(s)
    assert cat.data_scopes() == {f"{a}:{x}" for a in AREAS for x in ("read", "write")}
    assert all(sc.SCOPE_RE.match(s) for s in cat.entries)
    assert cat.describe("contacts:read") == "View contacts"


def test_unknown_scopes_are_reported_in_order() -> None:
    cat = Catalogue()
    assert cat.unknown(["contacts:read", "contacts:delete", "nope:read"]) == [
        "contacts:delete", "nope:read"]
    assert cat.unknown([]) == []
    assert "invoices:read" not in cat
    custom = Catalogue({"invoices:read": "View invoices"})
    assert "invoices:read" in custom
    assert custom.unknown(["contacts:read"]) == ["contacts:read"]
    assert custom.data_scopes() == {"invoices:read"}


def test_normalise_deduplicates_and_sorts() -> None:
    assert sc.normalise(["b:read", "a:write", "b:read"]) == ["a:write", "b:read"]


@pytest.mark.parametrize("name", ["contacts:read", "a:b", "my-area_2:do_it"])
def test_scope_names_that_are_accepted(name: str) -> None:
    assert sc.SCOPE_RE.match(name)


@pytest.mark.parametrize("name", [
    "", "contacts", "Contacts:read", "contacts:Read", "contacts:read:x", ":read", "contacts:",
    "1contacts:read", "contacts:read\n", "contacts :read", "a" * 41 + ":read",
    "contacts:" + "r" * 21,
])
def test_scope_names_that_are_refused(name: str) -> None:
    assert not sc.SCOPE_RE.match(name)
