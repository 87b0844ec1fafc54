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
    """CIDRs (or single addresses) to networks; IPv4-mapped IPv6 ranges become IPv4."""
    out: list[Network] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValidationError(f"{field_name}[{i}] must be a string", field=field_name)
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValidationError(
                f"{field_name}[{i}] is not an IPv4 or IPv6 CIDR: {value[:60]!r}", field=field_name
            ) from None
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            mapped = net.network_address.ipv4_mapped
            net = ipaddress.ip_network(f"{mapped}/{max(net.prefixlen - 96, 0)}", strict=False)
        out.append(net)
    return tuple(out)


def normalise_networks(values: Iterable[str], field_name: str = "allowed_ips") -> list[str]:
    return [str(n) for n in parse_networks(values, field_name)]


def parse_address(value: str | None) -> Address | None:
    """An IP address (IPv4-mapped IPv6 becomes IPv4), or None; memoised for the hot path."""
    if not value:
        return None
    return _parse_address(value)


@functools.lru_cache(maxsize=65_536)
def _parse_address(value: str) -> Address | None:
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
        missing = r.required - s.scopes
        if missing:
            return Denied(
                Code.INSUFFICIENT_SCOPE, "missing scope: " + ", ".join(sorted(missing))
            )
        return None


CHECKS = (StateCheck(), ExpiryCheck(), TlsCheck(), IpCheck(), ScopeCheck())


def decide(snapshot: Snapshot, request: Request) -> Decision:
    for check in CHECKS:
        denial = check(snapshot, request)
        if denial is not None:
            return denial
    return ALLOWED
