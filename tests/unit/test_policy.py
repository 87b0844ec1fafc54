"""Verification policy: each frozen check, and decide() over a snapshot and a request."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.core.decisions import ALLOWED, Code
from keyplane.core.errors import ValidationError
from keyplane.core.policy import (
    ExpiryCheck,
    Request,
    Snapshot,
    address_allowed,
    decide,
    normalise_networks,
    parse_address,
    parse_networks,
)

T = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def snap(**kw: object) -> Snapshot:
    base = Snapshot(key_id="key_1", tenant_id="loc_1", owner_id="usr_1", name="k",
                    scopes=frozenset({"contacts:read"}), expires_at=T, require_tls=False)
    return replace(base, **kw)  # type: ignore[arg-type]


def req(**kw: object) -> Request:
    return replace(Request(now=T - timedelta(days=1)), **kw)  # type: ignore[arg-type]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return parse_address(text)


def test_a_plain_valid_key_is_allowed() -> None:
    decision = decide(snap(), req())
    assert decision is ALLOWED
    assert decision.valid and decision.code is Code.VALID


def test_expiry_boundary_one_second_before_is_accepted_at_t_rejected() -> None:
    assert decide(snap(), req(now=T - SECOND)).valid
    at = decide(snap(), req(now=T))
    assert not at.valid and at.code is Code.EXPIRED
    assert decide(snap(), req(now=T + SECOND)).code is Code.EXPIRED
    assert ExpiryCheck()(snap(expires_at=None), req(now=T + timedelta(days=9999))) is None


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"revoked": True}, Code.REVOKED, "revoked"),
    ({"enabled": False}, Code.DISABLED, "locked"),
    ({"owner_enabled": False}, Code.DISABLED, "owner"),
    ({"tenant_enabled": False}, Code.DISABLED, "tenant"),
])
def test_state_checks(change: dict[str, object], code: Code, words: str) -> None:
    decision = decide(snap(**change), req())
    assert not decision.valid
    assert decision.code is code
    assert words in decision.reason


def test_revoked_wins_over_expired_and_locked() -> None:
    decision = decide(snap(revoked=True, enabled=False), req(now=T + SECOND))
    assert decision.code is Code.REVOKED


@pytest.mark.parametrize(("tls", "valid"), [(None, False), (False, False), (True, True)])
def test_tls_required(tls: bool | None, valid: bool) -> None:
    decision = decide(snap(require_tls=True), req(tls=tls))
    assert decision.valid is valid
    if not valid:
        assert decision.code is Code.TLS_REQUIRED


@pytest.mark.parametrize("tls", [None, False, True])
def test_tls_not_required_accepts_any_transport(tls: bool | None) -> None:
    assert decide(snap(require_tls=False), req(tls=tls)).valid


@pytest.mark.parametrize(("nets", "addr", "valid"), [
    (["203.0.113.0/24"], "203.0.113.5", True),
    (["203.0.113.0/24"], "203.0.114.5", False),
    (["203.0.113.5"], "203.0.113.5", True),  # a single address is a /32
    (["203.0.113.5"], "203.0.113.6", False),
    (["2001:db8::/32"], "2001:db8:1::1", True),
    (["2001:db8::/32"], "2001:db9::1", False),
    (["2001:db8::/32"], "203.0.113.5", False),  # other family never matches
    (["203.0.113.0/24"], "2001:db8::1", False),
    # IPv4-mapped IPv6, in the address and in the network
    (["203.0.113.0/24"], "::ffff:203.0.113.5", True),
    (["203.0.113.0/24"], "::ffff:198.51.100.1", False),
    (["::ffff:203.0.113.0/120"], "203.0.113.5", True),
    (["::ffff:203.0.113.0/120"], "::ffff:203.0.113.5", True),
    (["::ffff:203.0.113.0/120"], "203.0.114.5", False),
    (["::ffff:203.0.113.5"], "203.0.113.5", True),
    (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::5", True),
    (["10.0.0.0/8", "2001:db8::/32"], "10.9.9.9", True),
    ([], "198.51.100.1", True),  # no list: every address
])
def test_key_ip_allowlist(nets: list[str], addr: str, valid: bool) -> None:
    decision = decide(snap(networks=parse_networks(nets)), req(ip=ip(addr)))
    assert decision.valid is valid
    if not valid:
        assert decision.code is Code.IP_NOT_ALLOWED
        assert "key" in decision.reason


def test_an_allowlist_refuses_an_unknown_address() -> None:
    decision = decide(snap(networks=parse_networks(["10.0.0.0/8"])), req(ip=None))
    assert decision.code is Code.IP_NOT_ALLOWED
    assert decide(snap(), req(ip=None)).valid


def test_tenant_allowlist_applies_on_top_of_the_key_list() -> None:
    s = snap(networks=parse_networks(["10.0.0.0/8"]),
             tenant_networks=parse_networks(["10.1.0.0/16"]))
    assert decide(s, req(ip=ip("10.1.2.3"))).valid
    outside_tenant = decide(s, req(ip=ip("10.2.0.1")))
    assert outside_tenant.code is Code.IP_NOT_ALLOWED
    assert "tenant" in outside_tenant.reason
    only_tenant = snap(tenant_networks=parse_networks(["::ffff:192.0.2.0/120"]))
    assert decide(only_tenant, req(ip=ip("::ffff:192.0.2.9"))).valid
    assert decide(only_tenant, req(ip=ip("198.51.100.1"))).code is Code.IP_NOT_ALLOWED


def test_missing_scope_names_the_scope() -> None:
    s = snap(scopes=frozenset({"contacts:read", "contacts:write"}))
    assert decide(s, req(required=frozenset({"contacts:read"}))).valid
    assert decide(s, req(required=frozenset({"contacts:read", "contacts:write"}))).valid
    decision = decide(s, req(required=frozenset({"contacts:read", "payments:write",
                                                 "calendars:read"})))
    assert decision.code is Code.INSUFFICIENT_SCOPE
    assert "calendars:read" in decision.reason and "payments:write" in decision.reason
    assert "contacts:read" not in decision.reason


def test_state_is_checked_before_anything_else() -> None:
    s = snap(enabled=False, require_tls=True, networks=parse_networks(["10.0.0.0/8"]))
    decision = decide(s, req(tls=False, ip=ip("192.0.2.1"),
                             required=frozenset({"payments:write"})))
    assert decision.code is Code.DISABLED


def test_networks_are_normalised() -> None:
    assert normalise_networks([" 10.0.0.0/8 ", "2001:DB8::/32", "::ffff:203.0.113.0/120",
                               "::ffff:203.0.113.5", "192.0.2.7", "1.2.3.0/255.255.255.0"]) == [
        "10.0.0.0/8", "2001:db8::/32", "203.0.113.0/24", "203.0.113.5/32", "192.0.2.7/32",
        "1.2.3.0/24"]


@pytest.mark.parametrize(("bad", "says"), [
    ("10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8 (the whole network) or 10.0.0.1/32"),
    ("2001:db8::1/32", "did you mean 2001:db8::/32 (the whole network) or 2001:db8::1/128"),
    ("::ffff:203.0.113.5/120", "did you mean 203.0.113.0/24"),
    ("1.2.3.4/255.0.0.0", "did you mean 1.0.0.0/8"),
    ("010.0.0.0/8", "leading zeros (some tools read them as octal); did you mean 10.0.0.0/8?"),
    ("1.2.3.0/024", "leading zeros (some tools read them as octal); did you mean 1.2.3.0/24?"),
    ("1.2.3.4/08", "did you mean 1.0.0.0/8?"),
    ("192.168.001.0/24", "did you mean 192.168.1.0/24?"),
    ("fe80::1%eth0", "zone id"),
    ("fe80::%1/64", "zone id"),
    ("fe80::/64%1", "zone id"),
])
def test_cidrs_are_never_silently_widened_or_reinterpreted(bad: str, says: str) -> None:
    """Host bits, leading zeros and IPv6 zone ids are refused, saying what to write instead."""
    with pytest.raises(ValidationError) as info:
        normalise_networks(["10.0.0.0/8", bad], "policy.allowed_ips")
    assert info.value.field == "policy.allowed_ips"
    assert info.value.message.startswith(f"policy.allowed_ips[1]: {bad!r} has ")
    assert says in info.value.message


_CIDR_CHARS = st.sampled_from([*"0123456789abcdefABCDEF.:/% ", "\x00", "\ud800", "\u0663"])
_CIDRISH = st.one_of(
    st.text(max_size=50),
    st.text(_CIDR_CHARS, max_size=45),
    st.builds("{}/{}".format, st.ip_addresses().map(str), st.integers(-1, 130).map(str)),
    st.builds("{}/0{}".format, st.ip_addresses().map(str), st.integers(0, 32).map(str)),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"{a}%{a.packed[0]}"),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_CIDRISH, max_size=3))
def test_any_text_either_normalises_to_cidrs_that_round_trip_or_is_refused_by_field(
        values: list[str]) -> None:
    try:
        out = normalise_networks(values, "allowed_ips")
    except ValidationError as exc:
        assert exc.field == "allowed_ips"
        assert exc.message.startswith("allowed_ips[")
        return
    assert len(out) == len(values)
    assert normalise_networks(out, "allowed_ips") == out  # canonical: a fixed point
    for text in out:
        assert str(ipaddress.ip_network(text, strict=True)) == text
        assert "%" not in text


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "300.1.1.1", "2001:db8::/129", "example.com",
                                 "", "10.0.0.0/8/8", "1.2.3.4 5.6.7.8"])
def test_bad_cidrs_raise_a_validation_error_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_networks(["10.0.0.0/8", bad], "allowed_ips")
    assert info.value.field == "allowed_ips"
    assert "allowed_ips[1]" in info.value.message


def test_non_string_networks_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        parse_networks([167772160], "policy.allowed_ips")  # type: ignore[list-item]
    assert info.value.field == "policy.allowed_ips"


def test_parse_address() -> None:
    assert parse_address("fe80::1%eth0") is None  # a zone id names the sender's interface
    assert parse_address("fe80::1%1") is None
    assert parse_address("::ffff:203.0.113.5") == ipaddress.IPv4Address("203.0.113.5")
    assert parse_address(" 2001:db8::1 ") == ipaddress.IPv6Address("2001:db8::1")
    assert parse_address("not an ip") is None
    assert parse_address("") is None
    assert parse_address(None) is None


def test_address_allowed_never_matches_across_families() -> None:
    v6_all = parse_networks(["::/0"])
    assert not address_allowed(ipaddress.IPv4Address("1.2.3.4"), v6_all)
    assert address_allowed(ipaddress.IPv6Address("2001:db8::1"), v6_all)
    assert address_allowed(ipaddress.IPv4Address("1.2.3.4"), parse_networks(["0.0.0.0/0"]))


def test_a_key_with_a_rate_limit_or_a_quota_is_counted_on_every_use() -> None:
    assert not snap().counted
    assert snap(ratelimit=(10, 60)).counted
    assert snap(meta={"quota": True}).counted
    assert not snap(meta={"grant_id": "con_1"}).counted
