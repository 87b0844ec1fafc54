"""What the SDK must know of Keyplane's protocol, in the SDK's own code (no server import).

- the key format: ``<prefix>_<body><check>``, ``check`` the CRC32 of ``<prefix>_<body>`` in 6
  base62 characters, so a malformed key is refused before Keyplane is asked;
- the shape of an imported (foreign) key;
- the scope grammar (``area:action``) and its expansion (``area:write`` implies ``area:read``);
- the change kinds of ``/v1/changes`` and the identity field each one names;
- the verification codes of ``/v1/verify`` and the HTTP status and error code of each refusal;
- client addresses: IPv4-mapped IPv6 is IPv4, an IPv6 zone id is no address.

The server's rules live in ``keyplane.core``; ``tests/sdk/test_protocol_contract.py`` runs one
table of cases through both, so the two cannot drift apart. Every pattern is anchored with
``\\A...\\Z``: ``$`` would also accept a final newline.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import zlib
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Final

# -- the key format -----------------------------------------------------------------------------

ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH: Final = 32
CHECK_LENGTH: Final = 6
MAX_BODY_LENGTH: Final = 128
PREFIX_RE: Final = re.compile(r"\A[a-z][a-z0-9]{1,15}\Z")
# every two-digit base62 number: a CRC32 (< 62**6) is three table lookups
_PAIRS: Final = [a + b for a in ALPHABET for b in ALPHABET]
_KNOWN_PREFIXES: set[str] = set()  # configured prefixes already checked against PREFIX_RE


def checksum(prefix: str, body: str) -> str:
    """The 6 check characters of a key with ``prefix`` and ``body``."""
    return _check_digits(zlib.crc32(f"{prefix}_{body}".encode()))


def _check_digits(crc: int) -> str:
    high, rest = divmod(crc, 14_776_336)  # 62**4
    mid, low = divmod(rest, 3844)  # 62**2
    return _PAIRS[high] + _PAIRS[mid] + _PAIRS[low]


def prefix_of(raw: str, prefixes: Collection[str] | None = None) -> str | None:
    """The prefix of ``raw`` if it is a well-formed, checksum-valid key (restricted to
    ``prefixes`` when given), else ``None``. A CRC32; nothing is asked."""
    if not isinstance(raw, str) or len(raw) > MAX_BODY_LENGTH + 20:
        return None
    prefix, sep, rest = raw.partition("_")
    if not sep or (prefixes is not None and prefix not in prefixes):
        return None
    if prefix not in _KNOWN_PREFIXES:
        if not PREFIX_RE.match(prefix):
            return None
        if prefixes is not None:  # only configured prefixes are remembered: bounded
            _KNOWN_PREFIXES.add(prefix)
    if not BODY_LENGTH + CHECK_LENGTH <= len(rest) <= MAX_BODY_LENGTH:
        return None
    if not (rest.isascii() and rest.isalnum()):  # ASCII letters and digits: base62
        return None
    expected = _check_digits(zlib.crc32(raw[:-CHECK_LENGTH].encode()))
    if not hmac.compare_digest(rest[-CHECK_LENGTH:], expected):
        return None
    return prefix


# keys brought in by ``keyplane import`` keep their own format (no checksum): what an HTTP
# header carries unquoted and unambiguously (no space, no ':' which separates a key's name)
MIN_FOREIGN: Final = 16
MAX_FOREIGN: Final = 256
FOREIGN_RE: Final = re.compile(r"\A[A-Za-z0-9._~+/=-]{" + f"{MIN_FOREIGN},{MAX_FOREIGN}" + r"}\Z")


def foreign_shape(raw: str) -> bool:
    """Whether ``raw`` may be an imported key in a foreign format."""
    return isinstance(raw, str) and FOREIGN_RE.match(raw) is not None


# -- scopes -------------------------------------------------------------------------------------

SCOPE_RE: Final = re.compile(r"\A[a-z][a-z0-9_-]{0,39}:[a-z][a-z0-9_-]{0,19}\Z")


def valid_scope(scope: object) -> bool:
    """Whether ``scope`` is an ``area:action`` scope."""
    return isinstance(scope, str) and SCOPE_RE.match(scope) is not None


def implied(scope: str) -> frozenset[str]:
    """The scope and what it implies: ``area:write`` ⇒ ``area:read``."""
    area, _, action = scope.partition(":")
    if action == "write":
        return frozenset({scope, f"{area}:read"})
    return frozenset({scope})


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes and everything they imply."""
    out: set[str] = set()
    for scope in scopes:
        out |= implied(scope)
    return frozenset(out)


# -- the change stream --------------------------------------------------------------------------

# the identity field (of a /v1/verify answer) that a change of each kind names; an access
# token's key_id is its connection's id
CHANGE_FIELDS: Final[Mapping[str, str]] = MappingProxyType({
    "key": "key_id", "principal": "owner_id", "tenant": "tenant_id",
    "connection": "key_id", "app": "app_id"})
# kinds that may affect any cached verdict: everything is dropped ("all": the server cannot
# replay from the client's position). An unknown kind is treated the same way.
DROP_ALL_KINDS: Final = frozenset({"all", "catalogue", "import"})
RESET_KIND: Final = "all"

# -- verification answers -----------------------------------------------------------------------

VALID: Final = "VALID"
# each refusal code of /v1/verify: (HTTP status, error code the product's client sees).
# Unknown, malformed, expired, revoked and disabled keys look alike: no state oracle.
REFUSALS: Final[Mapping[str, tuple[int, str]]] = MappingProxyType({
    "MALFORMED": (401, "invalid_key"),
    "NOT_FOUND": (401, "invalid_key"),
    "EXPIRED": (401, "invalid_key"),
    "REVOKED": (401, "invalid_key"),
    "DISABLED": (401, "invalid_key"),
    "INSUFFICIENT_SCOPE": (403, "insufficient_scope"),
    "IP_NOT_ALLOWED": (403, "ip_not_allowed"),
    "TLS_REQUIRED": (403, "tls_required"),
    "RATE_LIMITED": (429, "rate_limited"),
})
UNKNOWN_REFUSAL: Final = (401, "invalid_key")  # a code this SDK does not know yet


def refusal(code: str) -> tuple[int, str]:
    """The HTTP status and error code for a refusal ``code`` of ``/v1/verify``."""
    return REFUSALS.get(code, UNKNOWN_REFUSAL)


# -- client addresses ---------------------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(value: str | None) -> Address | None:
    """An IP address (IPv4-mapped IPv6 becomes IPv4), or ``None`` (also for an IPv6 zone id:
    ``fe80::1%eth0`` names an interface of the sender); memoised for the hot path."""
    if not value:
        return None
    return _parse_address(value)


@functools.lru_cache(maxsize=65_536)
def _parse_address(value: str) -> Address | None:
    if "%" in value:
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) to networks, host bits dropped; IPv4-mapped IPv6 ranges
    become IPv4. Raises ``ValueError`` for anything else."""
    out: list[Network] = []
    for value in values:
        net = ipaddress.ip_network(value.strip(), strict=False)
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            mapped = net.network_address.ipv4_mapped
            net = ipaddress.ip_network(f"{mapped}/{max(net.prefixlen - 96, 0)}", strict=False)
        out.append(net)
    return tuple(out)


def in_networks(addr: Address, networks: Iterable[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)
