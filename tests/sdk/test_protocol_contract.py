"""The SDK's protocol module (``keyplane.sdk._protocol``) against the server's rules.

The SDK keeps its own copy of the key checksum, the scope grammar and expansion, the change
kinds, the verification codes' HTTP statuses and the address rules, so that it installs without
the server. Each table below runs through both; a case on which they differ fails here. The
first drift found this way: the SDK's scope pattern ``^…$`` accepted ``"contacts:read\\n"``,
which the core's ``\\A…\\Z`` refuses.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keyplane
import keyplane.core
from keyplane.core import legacy, policy, scopes, tokens
from keyplane.core.decisions import Code, Denied
from keyplane.core.errors import ValidationError
from keyplane.sdk import _protocol as sdk
from keyplane.sdk import _version, requires

# -- the key format -----------------------------------------------------------------------------

BODY = "0123456789ABCDEFGHIJKLMNOPQRSTUV"  # 32 base62 characters


def key(prefix: str, body: str = BODY) -> str:
    """A key with a correct checksum for whatever ``prefix`` and ``body`` are."""
    return f"{prefix}_{body}{tokens.checksum(prefix, body)}"


GOOD = key("kp")
KEYS: list[tuple[str, Any]] = [
    ("a generated key", tokens.generate("kp")),
    ("another prefix", tokens.generate("acme2024")),
    ("a fixed key", GOOD),
    ("the longest body", key("kp", "a" * (sdk.MAX_BODY_LENGTH - sdk.CHECK_LENGTH))),
    ("a body too long", key("kp", "a" * (sdk.MAX_BODY_LENGTH - sdk.CHECK_LENGTH + 1))),
    ("a body too short", key("kp", BODY[:-1])),
    ("a typo", GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")),
    ("two characters swapped", GOOD[:3] + GOOD[4] + GOOD[3] + GOOD[5:]),
    ("a trailing newline", GOOD + "\n"),
    ("a leading space", " " + GOOD),
    ("a prefix with a trailing newline", key("kp\n")),
    ("an upper-case prefix", key("KP")),
    ("a one-letter prefix", key("k")),
    ("a 16-character prefix", key("a" * 16)),
    ("a 17-character prefix", key("a" * 17)),
    ("a prefix starting with a digit", key("1kp")),
    ("non-ASCII digits", key("kp", "\u0663" * 32)),
    ("a dash in the body", key("kp", BODY[:-1] + "-")),
    ("no separator", GOOD.replace("_", "")),
    ("empty", ""),
    ("only the prefix", "kp_"),
    ("a bearer scheme left in", "Bearer " + GOOD),
]


@pytest.mark.parametrize(("case", "raw"), KEYS, ids=[c for c, _ in KEYS])
@pytest.mark.parametrize("prefixes", [None, ("kp",), ("sk", "acme2024")])
def test_the_checksum_accepts_what_the_core_accepts(case: str, raw: str,
                                                    prefixes: tuple[str, ...] | None) -> None:
    assert sdk.prefix_of(raw, prefixes) == tokens.prefix_of(raw, prefixes)


def test_the_cases_cover_both_answers() -> None:  # a table where everything fails proves little
    answers = [tokens.prefix_of(raw) is not None for _, raw in KEYS]
    assert sum(answers) >= 5 and answers.count(False) >= 10


@pytest.mark.parametrize(("prefix", "body"), [("kp", BODY), ("a1", "z" * 90), ("kp\n", BODY)])
def test_check_characters(prefix: str, body: str) -> None:
    assert sdk.checksum(prefix, body) == tokens.checksum(prefix, body)


FOREIGN = ["a" * 15, "a" * 16, "a" * 256, "a" * 257, "AbC.dEf-GhI_jKl~Mn+o/p=",
           "abcdefghijklmnop\n", "\nabcdefghijklmnop", "abcdefghijklmnop ", "abc:defghijklmnopq",
           "prefix.secretsecretsecret", "ÄÖÜäöüÄÖÜäöüÄÖÜäöü", GOOD, ""]


@pytest.mark.parametrize("raw", FOREIGN)
def test_the_shape_of_imported_keys(raw: str) -> None:
    assert sdk.foreign_shape(raw) is legacy.foreign_shape(raw)


# -- scopes -------------------------------------------------------------------------------------

SCOPES = ["contacts:read", "contacts:read\n", "\ncontacts:read", "contacts:read ", "Contacts:read",
          "a:b", "a" * 40 + ":read", "a" * 41 + ":read", "x:" + "a" * 20, "x:" + "a" * 21,
          "contacts", ":read", "contacts:", "contacts:read:x", "contacts: read", "con-tacts:re_ad",
          "1contacts:read", "contacts:1read", "contacts:réad", "keys:verify", ""]


@pytest.mark.parametrize("scope", SCOPES)
def test_the_scope_grammar(scope: str) -> None:
    valid = scopes.SCOPE_RE.match(scope) is not None
    assert sdk.valid_scope(scope) is valid
    if valid:
        assert requires(scope).scopes == {scope}
    else:
        with pytest.raises(ValueError, match="area:action"):
            requires(scope)


def test_a_trailing_newline_is_no_scope() -> None:  # the drift this contract was written for
    assert not sdk.valid_scope("contacts:read\n")
    with pytest.raises(ValueError):
        requires("contacts:read\n")


GRANTS = [[], ["contacts:write"], ["contacts:read"], ["contacts:write", "forms:read"],
          ["a:write", "a:read"], ["keys:write", "platform:write"], ["x:writer"], ["nocolon"],
          ["write"], [":write"]]


@pytest.mark.parametrize("granted", GRANTS)
def test_scope_expansion(granted: list[str]) -> None:
    assert sdk.expand_scopes(granted) == scopes.expand(granted)
    for scope in granted:
        assert sdk.implied(scope) == scopes.implied(scope)


# -- the change stream --------------------------------------------------------------------------

def server_change_kinds() -> set[str]:
    """Every change kind the server records: an enum of kinds in ``keyplane.core`` when there
    is one, and the kinds the services name as strings in ``ctx.changed(uow, "<kind>", …)``."""
    kinds: set[str] = set()
    for info in pkgutil.walk_packages(keyplane.core.__path__, "keyplane.core."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, enum.Enum) and \
                    {"key", "principal", "tenant"} <= {str(m.value) for m in value}:
                kinds |= {str(m.value) for m in value}
    services = Path(keyplane.__file__).parent / "services"
    for path in services.rglob("*.py"):
        kinds |= set(re.findall(r"\.changed\(\s*uow,\s*\"([a-z_]+)\"", path.read_text()))
    return kinds


def test_the_sdk_knows_every_change_kind_and_no_other() -> None:
    kinds = server_change_kinds()
    assert {"key", "principal", "tenant", "connection", "app", "all"} <= kinds  # found at all
    assert set(sdk.CHANGE_FIELDS) | sdk.DROP_ALL_KINDS == kinds
    assert not set(sdk.CHANGE_FIELDS) & sdk.DROP_ALL_KINDS
    assert sdk.RESET_KIND in sdk.DROP_ALL_KINDS


# -- verification answers -----------------------------------------------------------------------

def test_every_verification_code_has_one_meaning() -> None:
    assert set(sdk.REFUSALS) | {sdk.VALID} == {code.value for code in Code}
    assert Code.VALID.value == sdk.VALID


@pytest.mark.parametrize("code", [c for c in Code if c is not Code.VALID], ids=str)
def test_refusals_answer_as_the_server_answers_a_proxy(code: Code) -> None:
    """The server's ``/v1/forward-auth`` encodes the same refusals for reverse proxies, with
    the SDK's bodies: same status, same error code."""
    from keyplane.services.verify import Verdict
    from keyplane.web.forwardauth import _answer

    status, _headers, body = _answer(Verdict(Denied(code, "why")))
    assert isinstance(body, dict)
    assert (status, body["error"]["code"]) == sdk.refusal(code.value)


def test_an_unknown_code_is_refused() -> None:
    assert sdk.refusal("SOMETHING_NEW") == (401, "invalid_key")


# -- client addresses ---------------------------------------------------------------------------

ADDRESSES = ["203.0.113.5", "::ffff:203.0.113.5", "::ffff:cb00:7105", "2001:db8::1", "fe80::1%eth0",
             " 10.0.0.1 ", "10.0.0.1\n", "010.0.0.1", "1.2.3", "256.1.1.1", "::", "not an address",
             "", None, "2001:DB8::1"]


@pytest.mark.parametrize("value", ADDRESSES)
def test_addresses(value: str | None) -> None:
    assert sdk.parse_address(value) == policy.parse_address(value)


NETWORKS = ["10.0.0.0/8", "10.0.0.1/8", "203.0.113.5", "::ffff:10.0.0.0/104", "::ffff:0:0/96",
            "2001:db8::/32", " 192.168.0.0/16 ", "10.0.0.0/33", "nonsense", "fe80::/10"]


@pytest.mark.parametrize("value", NETWORKS)
def test_trusted_proxy_networks(value: str) -> None:
    try:
        expected: Any = policy.parse_networks([value])
    except ValidationError:
        expected = ValueError
    try:
        found: Any = sdk.parse_networks([value])
    except ValueError:
        found = ValueError
    assert found == expected


def test_the_sdk_version_is_the_servers() -> None:
    assert _version.__version__ == keyplane.__version__


# -- client address and TLS behind trusted proxies ----------------------------------------------

PROXIES = ["10.0.0.0/8", "2001:db8::/32", "fe80::/10"]
# (socket peer, headers, scheme, trusted proxies)
REQUESTS: list[tuple[str | None, dict[str, str], str, list[str]]] = [
    ("203.0.113.5", {}, "http", PROXIES),
    ("203.0.113.5", {"x-forwarded-for": "198.51.100.7"}, "http", PROXIES),  # not a proxy
    ("10.0.0.5", {"x-forwarded-for": "198.51.100.7"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": "198.51.100.7"}, "http", []),
    ("10.0.0.5", {"x-forwarded-for": "192.0.2.1, 198.51.100.7, 10.1.1.1"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": "10.2.2.2, 10.1.1.1"}, "http", PROXIES),  # all proxies
    ("10.0.0.5", {"x-forwarded-for": "nonsense, 10.1.1.1"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": "198.51.100.7:4431"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": "[2001:db8:1::1]"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": "fe80::1%eth0"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": " , "}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": ""}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-for": "::ffff:198.51.100.7"}, "http", PROXIES),
    ("::ffff:10.0.0.5", {"x-forwarded-for": "198.51.100.7"}, "http", PROXIES),
    ("fe80::1%eth0", {"x-forwarded-for": "198.51.100.7"}, "http", PROXIES),
    ("2001:db8::5", {"x-forwarded-for": "2001:db8::9, 2a00:1450::1"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-proto": "https"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-proto": "HTTPS"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-proto": "https, http"}, "http", PROXIES),
    ("10.0.0.5", {"x-forwarded-proto": "http"}, "https", PROXIES),
    ("203.0.113.5", {"x-forwarded-proto": "https"}, "http", PROXIES),  # not a proxy
    ("203.0.113.5", {}, "https", []),
    ("not an address", {"x-forwarded-for": "198.51.100.7"}, "http", PROXIES),
    (None, {"x-forwarded-for": "198.51.100.7"}, "http", PROXIES),
]


@pytest.mark.parametrize(("peer", "headers", "scheme", "trusted"), REQUESTS)
def test_client_address_and_tls_as_the_server_resolves_them(
        peer: str | None, headers: dict[str, str], scheme: str, trusted: list[str]) -> None:
    from starlette.requests import HTTPConnection

    from keyplane.sdk._peer import Peer
    from keyplane.web import net

    scope = {"type": "http", "scheme": scheme, "path": "/", "query_string": b"",
             "client": (peer, 50000) if peer is not None else None,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    networks = policy.parse_networks(trusted)
    conn = HTTPConnection(scope)
    address = net.client_address(conn, networks)
    expected = (str(address) if address is not None else None, net.is_tls(conn, networks))
    assert Peer(trusted).resolve(scope) == expected


# -- where a request carries its key ------------------------------------------------------------

LEGACY = ["X-Legacy-Key"]
HEADERS: list[list[tuple[str, str]]] = [
    [("Authorization", f"Bearer {GOOD}")],
    [("Authorization", f"bearer {GOOD}")],
    [("Authorization", f"BEARER   svc:{GOOD}  ")],
    [("Authorization", "Bearer svc:")],
    [("Authorization", f"Bearer Bearer {GOOD}")],
    [("Authorization", "Basic dXNlcjpwYXNz"), ("Authorization", f"Bearer {GOOD}")],
    [("Authorization", "Basic dXNlcjpwYXNz"), ("X-API-Key", GOOD)],
    [("Authorization", "Bearer "), ("X-API-Key", GOOD)],
    [("Authorization", "Bearer"), ("X-API-Key", GOOD)],
    [("Authorization", f"Bearer\t{GOOD}")],
    [("Authorization", f"Bearer {GOOD}\xa0")],  # not ASCII whitespace: kept, then malformed
    [("X-API-Key", f"  {GOOD}  ")],
    [("X-API-Key", f"Bearer svc:{GOOD}")],
    [("X-API-Key", " "), ("X-API-Key", GOOD)],
    [("X-API-Key", ""), ("X-Legacy-Key", GOOD)],
    [("X-Legacy-Key", GOOD), ("X-API-Key", "other")],
    [("X-Other", GOOD)],
    [],
]


def _as_asgi(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _both(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    from keyplane.sdk._credentials import Credentials
    from keyplane.web import credentials

    found = Credentials(LEGACY).extract(headers)
    return (found.decode("latin-1") or None if found is not None else None,
            credentials.from_headers(headers, credentials.legacy_names(LEGACY)))


@pytest.mark.parametrize("headers", HEADERS)
def test_the_key_a_request_presents_as_the_server_reads_it(
        headers: list[tuple[str, str]]) -> None:
    sdk_key, server_key = _both(_as_asgi(headers))
    assert sdk_key == server_key


def test_the_header_cases_cover_keys_and_no_key() -> None:
    found = [_both(_as_asgi(h))[1] for h in HEADERS]
    assert GOOD in found and None in found and len(set(found)) >= 3


_NAMES = st.sampled_from([b"authorization", b"x-api-key", b"x-legacy-key", b"host"])
_VALUES = st.lists(st.sampled_from(
    [b"Bearer ", b"bearer ", b"Basic ", b" ", b"\t", b"svc:", b":", b"kp_a", b"kp_b", b"\xa0",
     b"Bearer", b"x"]), max_size=5).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_any_headers_give_the_sdk_and_the_server_the_same_key(
        headers: list[tuple[bytes, bytes]]) -> None:
    sdk_key, server_key = _both(headers)
    assert sdk_key == server_key
