"""Imported keys' formats and legacy digests (core/legacy.py), and the hygiene rule on
per-scope usage."""

from __future__ import annotations

import base64
import hashlib

from keyplane.core import legacy as lg
from keyplane.core.hygiene import unused_scopes

KEY = "AbCd1234.sEcReTsEcReTsEcReTsEcReTsEcReT12"


def sha512(raw: str) -> str:
    return "sha512$$" + hashlib.sha512(raw.encode()).hexdigest()


def pbkdf2(raw: str, salt: str = "s4lt", iterations: int = 1000) -> str:
    derived = hashlib.pbkdf2_hmac("sha256", raw.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(derived).decode()}"


def test_drf_digests_match_only_their_own_key() -> None:
    for encoded in (sha512(KEY), pbkdf2(KEY)):
        assert lg.drf_supported(encoded) is None
        assert lg.matches(lg.DRF, KEY, encoded)
        assert not lg.matches(lg.DRF, KEY[:-1] + "3", encoded)
        assert not lg.matches("other", KEY, encoded)  # an unknown scheme never matches


def test_unsupported_or_malformed_digests_are_named_and_never_match() -> None:
    assert "argon2" in (lg.drf_supported("argon2$argon2id$v=19$m=1$x$y") or "")
    assert "malformed" in (lg.drf_supported("sha512$$nothex") or "")
    assert "malformed" in (lg.drf_supported("pbkdf2_sha256$many$salt$x") or "")
    assert "malformed" in (lg.drf_supported("pbkdf2_sha256$99999999$salt$x") or "")  # too slow
    assert not lg.matches(lg.DRF, KEY, "sha512$$nothex")


def test_foreign_shapes_and_lookups() -> None:
    assert lg.foreign_shape(KEY) and lg.foreign_shape("sk_live_" + "a" * 24)
    for bad in ("short.key", "has space in it......", "name:secretsecretsecret", "x" * 257,
                "ünïcödé-ünïcödé-ünïcödé"):
        assert not lg.foreign_shape(bad)
    assert lg.lookups_of(KEY) == ["drf:AbCd1234"]
    assert lg.lookups_of("sk_live_" + "a" * 24) == []  # no dot: not the library's format
    assert lg.lookups_of(".secret") == [] and lg.lookups_of("pre.") == []


def test_a_scope_is_used_when_it_granted_what_a_use_needed() -> None:
    scopes = ["contacts:write", "calendars:read", "keys:verify"]
    assert unused_scopes(scopes, {"contacts:read"}) == ["calendars:read", "keys:verify"]
    assert unused_scopes(scopes, {"contacts:write", "calendars:read", "keys:verify"}) == []
    assert unused_scopes(["contacts:read"], {"contacts:write"}) == ["contacts:read"]
