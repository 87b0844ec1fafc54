"""Verification policy: small frozen checks over a key snapshot, each returning a denial or None.

The snapshot is what a cache holds: everything needed to decide, taken from the stored record
(the stored record is the authority; the presented key is only an identifier and a secret).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from keyplane.core.decisions import ALLOWED, Code, Decision, Denied
from keyplane.core.errors import ValidationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(values: Iterable[str], field_name: str = "allowed_ips") -> tuple[Network, ...]:
    """CIDRs (or single addresses) to networks; IPv4-mapped IPv6 ranges become IPv4. Lenient
    (host bits are dropped): for stored lists, which ``normalise_networks`` checked on the way
    in."""
    out: list[Network] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValidationError(f"{field_name}[{i}] must be a string", field=field_name)
        out.append(_network(value, i, field_name))
    return tuple(out)


def _network(value: str, i: int, field_name: str) -> Network:
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValidationError(
            f"{field_name}[{i}] is not an IPv4 or IPv6 CIDR: {value[:60]!r}", field=field_name
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
        mapped = net.network_address.ipv4_mapped
        net = ipaddress.ip_network(f"{mapped}/{max(net.prefixlen - 96, 0)}", strict=False)
    return net


def normalise_networks(values: Iterable[str], field_name: str = "allowed_ips") -> list[str]:
    """CIDRs as a caller wrote them, checked strictly, in canonical form. A CIDR is refused,
    never silently widened or reinterpreted, when it has host bits set (``10.0.0.1/8``), leading
    zeros (``010.0.0.0/8``, ``1.2.3.4/08``: some tools read them as octal) or an IPv6 zone id
    (``fe80::1%eth0``: a zone names a local interface, not a range); the message says what to
    write instead."""
    out: list[str] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValidationError(f"{field_name}[{i}] must be a string", field=field_name)
        problem = _cidr_problem(value.strip())
        if problem:
            raise ValidationError(f"{field_name}[{i}]: {value[:60]!r} {problem}",
                                  field=field_name)
        out.append(str(_network(value, i, field_name)))
    return out


def _cidr_problem(text: str) -> str | None:
    """Why a CIDR that ``ipaddress`` may accept or reinterpret is refused, or None."""
    if "%" in text:
        return ("has an IPv6 zone id (the part from %): zone ids name a local interface and "
                "are not allowed; write the address or range without it")
    addr, slash, prefix = text.partition("/")
    fixed_addr, fixed_prefix = addr, prefix
    if ":" not in addr and any(len(o) > 1 and o[0] == "0" and o.isdigit()
                               for o in addr.split(".")):
        fixed_addr = ".".join(str(int(o)) if o.isdigit() else o for o in addr.split("."))
    if slash and len(prefix) > 1 and prefix[0] == "0" and prefix.isascii() and prefix.isdigit():
        fixed_prefix = str(int(prefix))
    if (fixed_addr, fixed_prefix) != (addr, prefix):
        fixed = fixed_addr + slash + fixed_prefix
        hint = _suggest(fixed)
        return ("has leading zeros (some tools read them as octal)"
                + (f"; did you mean {hint}?" if hint else ""))
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None  # parse_networks names the problem
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        one = ipaddress.ip_address(addr)
        return (f"has host bits set; did you mean {_canonical(loose)} (the whole network) or "
                f"{_canonical(ipaddress.ip_network(one))} (that one address)?")
    return None


def _suggest(text: str) -> str | None:
    """The canonical form of a repaired CIDR, widened to its network if need be."""
    try:
        return _canonical(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def _canonical(net: Network) -> str:
    return str(_network(str(net), 0, ""))


def parse_address(value: str | None) -> Address | None:
    """An IP address (IPv4-mapped IPv6 becomes IPv4), or None (also for an IPv6 zone id:
    ``fe80::1%eth0`` names an interface of the sender, and never matches); memoised for the
    hot path."""
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


def address_allowed(addr: Address | None, networks: Sequence[Network]) -> bool:
    if not networks:
        return True
    if addr is None:
        return False
    return any(addr.version == n.version and addr in n for n in networks)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What verification needs to know about one secret of one key (or access token)."""

    key_id: str
    tenant_id: str | None
    owner_id: str | None
    name: str
    scopes: frozenset[str]  # effective: the key's scopes, expanded, ∩ the owner's rights
    expires_at: datetime | None  # of this secret (grace deadline or key expiry)
    revoked: bool = False
    enabled: bool = True
    owner_enabled: bool = True
    tenant_enabled: bool = True
    require_tls: bool = True
    networks: tuple[Network, ...] = ()
    tenant_networks: tuple[Network, ...] = ()
    ratelimit: tuple[int, int] | None = None  # (limit, window_seconds)
    kind: str = "key"
    client_id: str | None = None
    meta: dict[str, object] = field(default_factory=dict)
    # a key with data scopes whose owner is an API user in no data-access group (the tenant
    # policy api_users_need_group): refused whatever is asked, saying why
    owner_reaches_no_data: bool = False

    @property
    def counted(self) -> bool:
        """Does every use move a counter (a rate limit, a usage quota)? Then no answer about
        this key may be reused: each one is verified and counted here."""
        return self.ratelimit is not None or bool(self.meta.get("quota"))


@dataclass(frozen=True, slots=True)
class Request:
    now: datetime
    required: frozenset[str] = frozenset()
    ip: Address | None = None
    tls: bool | None = None  # None: the caller did not say; a TLS-only key is then refused


@dataclass(frozen=True, slots=True)
class StateCheck:
    def __call__(self, s: Snapshot, r: Request) -> Denied | None:
        if s.revoked:
            return Denied(Code.REVOKED, "the key has been revoked")
        if not s.enabled:
            if s.kind == "access_token":  # an access token is turned off with its app
                return Denied(Code.DISABLED, "the app is suspended by the Keyplane operator")
            return Denied(Code.DISABLED, "the key is locked")
        if not s.owner_enabled:
            return Denied(Code.DISABLED, "the key's owner is disabled or removed")
        if not s.tenant_enabled:
            return Denied(Code.DISABLED, "the tenant is disabled")
        return None


@dataclass(frozen=True, slots=True)
class ExpiryCheck:
    def __call__(self, s: Snapshot, r: Request) -> Denied | None:
        if s.expires_at is not None and r.now >= s.expires_at:
            return Denied(Code.EXPIRED, "the key has expired")
        return None


@dataclass(frozen=True, slots=True)
class TlsCheck:
    def __call__(self, s: Snapshot, r: Request) -> Denied | None:
        if s.require_tls and r.tls is not True:
            return Denied(Code.TLS_REQUIRED, "the key may only be used over a secure connection")
        return None


@dataclass(frozen=True, slots=True)
class IpCheck:
    def __call__(self, s: Snapshot, r: Request) -> Denied | None:
        if not address_allowed(r.ip, s.networks):
            return Denied(Code.IP_NOT_ALLOWED, "the client address is not in the key's allowlist")
        if not address_allowed(r.ip, s.tenant_networks):
            return Denied(Code.IP_NOT_ALLOWED, "the client address is not in the tenant allowlist")
        return None


@dataclass(frozen=True, slots=True)
class ScopeCheck:
    def __call__(self, s: Snapshot, r: Request) -> Denied | None:
        if s.owner_reaches_no_data:
            return Denied(Code.INSUFFICIENT_SCOPE, "the key's owner is an API user in no "
                          "data-access group, so it holds no data scopes")
        missing = r.required - s.scopes
        if missing:
            return Denied(
                Code.INSUFFICIENT_SCOPE, "missing scope: " + ", ".join(sorted(missing))
            )
        return None


CHECKS = (StateCheck(), ExpiryCheck(), TlsCheck(), IpCheck(), ScopeCheck())


def standing(snapshot: Snapshot, now: datetime) -> Decision:
    """Whether the credential itself is live (not revoked, locked, disabled or expired),
    whatever request it would make: the state and expiry checks alone."""
    request = Request(now=now)
    for check in CHECKS[:2]:
        denial = check(snapshot, request)
        if denial is not None:
            return denial
    return ALLOWED


def decide(snapshot: Snapshot, request: Request) -> Decision:
    for check in CHECKS:
        denial = check(snapshot, request)
        if denial is not None:
            return denial
    return ALLOWED
