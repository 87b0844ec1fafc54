"""Input checks shared by every use case: each bad input raises ValidationError naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from keyplane.core.errors import ValidationError
from keyplane.core.model import RateLimit
from keyplane.core.scopes import Catalogue
from keyplane.services import validate as v

CAT = Catalogue()


def refused(field: str, fn: Any, *args: Any, **kw: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kw)
    assert info.value.field == field, info.value.field
    assert field.split(".")[0] in info.value.message
    assert info.value.code == "invalid_request"
    return info.value


# -- text ------------------------------------------------------------------------------------

def test_text_accepts_and_strips() -> None:
    assert v.text("  zapier  ", "name", max_len=10) == "zapier"
    assert v.text("tab\there", "name", max_len=10) == "tab\there"
    assert v.text("Åsa ✓ 名前", "name", max_len=10) == "Åsa ✓ 名前"
    assert v.text(None, "description", max_len=10, required=False) == ""
    assert v.text("", "description", max_len=10, required=False) == ""
    assert v.text("x" * 10, "name", max_len=10) == "x" * 10


@pytest.mark.parametrize("value", [None, 1, 1.5, True, b"bytes", ["a"], {"a": 1}])
def test_text_refuses_wrong_types(value: Any) -> None:
    refused("name", v.text, value, "name", max_len=200)


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_text_refuses_empty_when_required(value: str) -> None:
    refused("name", v.text, value, "name", max_len=200)


def test_text_refuses_over_long() -> None:
    err = refused("description", v.text, "x" * 1001, "description", max_len=1000)
    assert "1000" in err.message


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "a\rb", "esc\x1b[31m", "bell\x07",
                                   "del\x7f", "c1\x85c1", "csi\x9b31m"])
def test_text_refuses_control_characters(value: str) -> None:
    refused("name", v.text, value, "name", max_len=200)


def test_text_control_characters_message_does_not_echo_the_value() -> None:
    err = refused("name", v.text, "evil\x1b]0;pwned\x07", "name", max_len=200)
    assert "\x1b" not in err.message and "pwned" not in err.message


# -- email -----------------------------------------------------------------------------------

def test_email_is_lowercased() -> None:
    assert v.email(" Ada@Example.COM ") == "ada@example.com"


@pytest.mark.parametrize("value", [None, 5, "", "ada", "ada@", "@example.com", "ada@example",
                                   "a b@example.com", "ada@@example.com", "x" * 65 + "@e.com"])
def test_bad_emails(value: Any) -> None:
    refused("email", v.email, value)


# -- scopes ----------------------------------------------------------------------------------

def test_scope_list_normalises() -> None:
    assert v.scope_list(["contacts:write", "calendars:read", "contacts:write"], CAT) == [
        "calendars:read", "contacts:write"]
    assert v.scope_list([], CAT) == []
    assert v.scope_list(("contacts:read",), CAT) == ["contacts:read"]


@pytest.mark.parametrize("value", [None, "contacts:read", {"contacts:read": True}, [1],
                                   ["contacts:read", None], [["contacts:read"]]])
def test_scope_list_refuses_wrong_shapes(value: Any) -> None:
    refused("scopes", v.scope_list, value, CAT)


def test_scope_list_refuses_and_names_an_unknown_scope() -> None:
    err = refused("scopes", v.scope_list, ["contacts:read", "contacts:delete"], CAT)
    assert "contacts:delete" in err.message
    refused("scopes", v.scope_list, ["CONTACTS:READ"], CAT)


# -- IP lists --------------------------------------------------------------------------------

def test_ip_list_normalises() -> None:
    assert v.ip_list(None) == []
    assert v.ip_list([]) == []
    assert v.ip_list(["10.0.0.0/8", "::ffff:203.0.113.5"]) == ["10.0.0.0/8", "203.0.113.5/32"]


@pytest.mark.parametrize("value", ["10.0.0.0/8", {"cidr": "10.0.0.0/8"}, 10, ["10.0.0.0/33"],
                                   ["not-an-ip"], [None], [167772160], ["10.0.0.0/8", ""],
                                   ["10.1.2.3/8"], ["fe80::1%eth0"], ["1.2.3.0/024"]])
def test_ip_list_refuses_bad_values(value: Any) -> None:
    refused("allowed_ips", v.ip_list, value)


def test_ip_list_is_bounded() -> None:
    refused("allowed_ips", v.ip_list, [f"10.0.{i // 256}.{i % 256}" for i in range(101)])
    assert len(v.ip_list([f"10.0.0.{i}" for i in range(100)])) == 100


def test_ip_list_uses_the_field_name_it_is_given() -> None:
    refused("policy.allowed_ips", v.ip_list, ["nope"], "policy.allowed_ips")


# -- rate limits -----------------------------------------------------------------------------

def test_ratelimit_shapes_that_are_accepted() -> None:
    assert v.ratelimit(None) is None
    assert v.ratelimit({"limit": 10}) == RateLimit(10, 60)
    assert v.ratelimit({"limit": 5, "window_seconds": 1}) == RateLimit(5, 1)
    assert v.ratelimit({"limit": 5, "window_seconds": 86400}) == RateLimit(5, 86400)


@pytest.mark.parametrize("value", [10, "10/minute", [10, 60], {"limit": 10, "burst": 5}])
def test_ratelimit_shapes_that_are_refused(value: Any) -> None:
    refused("ratelimit", v.ratelimit, value)


@pytest.mark.parametrize("value", [
    {}, {"window_seconds": 60}, {"limit": 0}, {"limit": -1}, {"limit": True}, {"limit": 1.5},
    {"limit": "10"}, {"limit": None}, {"limit": 1_000_001}, {"limit": 2**63},
    {"limit": 10**30}, {"limit": 10**100},
])
def test_ratelimit_limits_that_are_refused_name_the_bound(value: Any) -> None:
    error = refused("ratelimit.limit", v.ratelimit, value)
    assert "1 to 1000000" in error.message


@pytest.mark.parametrize("value", [0, 86401, True, "60", None])
def test_ratelimit_windows_that_are_refused_name_the_bound(value: Any) -> None:
    error = refused("ratelimit.window_seconds", v.ratelimit,
                    {"limit": 10, "window_seconds": value})
    assert "1 to 86400" in error.message


def test_the_largest_rate_limit_is_accepted() -> None:
    assert v.ratelimit({"limit": 1_000_000}) == RateLimit(1_000_000, 60)


def test_lists_are_bounded() -> None:
    error = refused("scopes", v.scope_list, ["contacts:read"] * 201, CAT)
    assert "at most 200" in error.message


# -- meta ------------------------------------------------------------------------------------

def test_meta_accepts_json_objects() -> None:
    assert v.meta(None) == {}
    value = {"team": "growth", "n": 3, "nested": {"list": [1, "two", None, True]}, "ü": "✓"}
    assert v.meta(value) == value
    assert v.meta(value) is not value  # a copy


@pytest.mark.parametrize("value", [[], "x", 5, True, [("a", 1)]])
def test_meta_must_be_an_object(value: Any) -> None:
    refused("meta", v.meta, value)


def test_meta_size_is_bounded() -> None:
    v.meta({"a": "x" * 4000})
    err = refused("meta", v.meta, {"a": "x" * 5000})
    assert "4096" in err.message
    refused("meta", v.meta, {"a": "é" * 2100})  # bounded in bytes, not characters


@pytest.mark.parametrize("value", [
    {"x": float("nan")}, {"x": float("inf")}, {"x": {1, 2}}, {"x": b"bytes"}, {"x": object()},
])
def test_meta_must_be_storable_json(value: dict[str, Any]) -> None:
    refused("meta", v.meta, value)


def test_meta_nesting_is_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(2000):  # well under the size bound, far too deep to store and serialise
        node["a"] = {}
        node = node["a"]
    refused("meta", v.meta, deep)
    ok: dict[str, Any] = {}
    node = ok
    for _ in range(v.MAX_META_DEPTH - 1):
        node["a"] = {}
        node = node["a"]
    assert v.meta(ok) == ok
    refused("meta", v.meta, {"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]})


# -- booleans, integers, fields --------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 0, "true", "false", None, "yes", 1.0])
def test_boolean_refuses_lookalikes(value: Any) -> None:
    refused("require_tls", v.boolean, value, "require_tls")


def test_boolean_accepts_booleans() -> None:
    assert v.boolean(True, "enabled") is True
    assert v.boolean(False, "enabled") is False


@pytest.mark.parametrize("value", [True, False, 1.0, 30.5, "30", None, [30]])
def test_integer_refuses_bools_floats_and_strings(value: Any) -> None:
    err = refused("expires_in_days", v.integer, value, "expires_in_days", minimum=1, maximum=365)
    assert "integer" in err.message


@pytest.mark.parametrize("value", [0, -1, 366, 10**100])
def test_integer_range(value: int) -> None:
    err = refused("expires_in_days", v.integer, value, "expires_in_days", minimum=1, maximum=365)
    assert "1" in err.message and "365" in err.message


def test_integer_bounds_are_inclusive() -> None:
    assert v.integer(1, "n", minimum=1, maximum=3) == 1
    assert v.integer(3, "n", minimum=1, maximum=3) == 3


def test_only_fields_names_the_first_unknown_field() -> None:
    v.only_fields({"name": "x"}, ("name", "scopes"))
    v.only_fields({}, ("name",))
    refused("zeta", v.only_fields, {"name": "x", "zeta": 1}, ("name",))
    refused("alpha", v.only_fields, {"zeta": 1, "alpha": 2}, ("name",))


# -- text hygiene: invisible and bidirectional-control characters ----------------------------

INVISIBLE = {  # every one the issue names, and the rest of the kinds it stands for
    "\u202e": "U+202E",  # right-to-left override
    "\u202a": "U+202A",  # left-to-right embedding
    "\u2066": "U+2066",  # left-to-right isolate
    "\u2069": "U+2069",  # pop directional isolate
    "\u200e": "U+200E",  # left-to-right mark
    "\u200f": "U+200F",  # right-to-left mark
    "\u200b": "U+200B",  # zero-width space
    "\ufeff": "U+FEFF",  # byte-order mark
    "\u2060": "U+2060",  # word joiner
    "\u2064": "U+2064",  # invisible plus
    "\u00ad": "U+00AD",  # soft hyphen
    "\u2028": "U+2028",  # line separator
    "\U000e0041": "U+E0041",  # tag latin capital a (invisible "ASCII smuggling")
}


@pytest.mark.parametrize("char", list(INVISIBLE))
def test_text_refuses_invisible_and_bidi_characters_naming_them(char: str) -> None:
    for value in (f"pay{char}ments", f"{char}payments", f"payments{char}"):
        for field, required in (("name", True), ("description", False)):
            err = refused(field, v.text, value, field, max_len=200, required=required)
            assert err.message == (f"{field} must not contain invisible or "
                                   f"bidirectional-control characters ({INVISIBLE[char]})")


def test_text_keeps_joiners_that_emoji_and_scripts_need() -> None:
    for value in ("ops \U0001f469\u200d\U0001f4bb",
                  "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with ZWNJ
                  "Åsa ✓ 名前", "flag \U0001f1f8\U0001f1ea", "tab\there"):
        assert v.text(value, "name", max_len=200) == value


def test_control_characters_are_named_as_such() -> None:
    err = refused("name", v.text, "a\x07b", "name", max_len=200)
    assert err.message == "name must not contain control characters (U+0007)"


def test_the_forbidden_class_is_exactly_every_control_and_format_character() -> None:
    """One character class, proven against this Python's Unicode database: Cc but tab, Cf but
    the zero-width joiner and non-joiner, and the line and paragraph separators."""
    import re
    import sys
    import unicodedata

    cls = re.compile(f"[{v.FORBIDDEN_CHARS}]")
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        expected = (unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
                    and c not in "\t\u200c\u200d")
        assert bool(cls.match(c)) is expected, f"U+{cp:04X}"


def test_name_pattern_agrees_with_the_validator() -> None:
    """The schema's pattern (web/schemas.py) accepts exactly what ``text`` accepts."""
    import re

    name, desc = re.compile(v.NAME_PATTERN), re.compile(v.TEXT_PATTERN)
    samples = ["Zapier", "  padded  ", "", "   ", "\t", "\u3000x", "\u00a0", "tab\there",
               "ops \U0001f469\u200d\U0001f4bb", "a\x07b", "x\x85", "\x1c", *(
                   f"a{c}b" for c in INVISIBLE), *INVISIBLE]
    for sample in samples:
        try:
            v.text(sample, "name", max_len=200)
            accepted = True
        except ValidationError:
            accepted = False
        assert bool(name.match(sample)) is accepted, repr(sample)
        try:
            v.text(sample, "description", max_len=200, required=False)
            accepted = True
        except ValidationError:
            accepted = False
        assert bool(desc.match(sample)) is accepted, repr(sample)
