"""Who is calling, and over what, from an ASGI scope.

The client address and TLS come from the socket. ``X-Forwarded-For`` and ``X-Forwarded-Proto``
count only when the peer is a configured trusted proxy; then the client is the rightmost hop
that is not itself a trusted proxy (ASVS 5.0 4.1.3), so a client cannot prepend a fake address.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from keyplane.sdk._protocol import in_networks, parse_address, parse_networks

__all__ = ["Peer"]


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Peer:
    """Resolves ``(client ip, tls)`` for a request, given the trusted proxies."""

    MAX_REMEMBERED = 4096

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self.trusted = parse_networks(trusted_proxies)
        # socket host -> (its address as text or None, is it a trusted proxy?)
        self._hosts: dict[str, tuple[str | None, bool]] = {}

    def _host(self, host: str) -> tuple[str | None, bool]:
        known = self._hosts.get(host)
        if known is None:
            addr = parse_address(host.partition("%")[0])  # a link-local peer's zone id
            known = (str(addr) if addr is not None else None,
                     addr is not None and bool(self.trusted) and in_networks(addr, self.trusted))
            if len(self._hosts) >= self.MAX_REMEMBERED:
                self._hosts.clear()
            self._hosts[host] = known
        return known

    def resolve(self, scope: Any) -> tuple[str | None, bool]:
        """``(client address as text or None, tls)``."""
        tls = scope.get("scheme") in ("https", "wss")
        client = scope.get("client")
        if not client:
            return None, tls
        # most requests come from a host seen before: one lookup, no call
        peer, trusted = self._hosts.get(client[0]) or self._host(client[0])
        if not trusted:
            return peer, tls
        proto = _header(scope, b"x-forwarded-proto")
        if proto and not tls:
            tls = proto.split(",")[-1].strip().lower() == "https"
        forwarded = _header(scope, b"x-forwarded-for")
        if not forwarded:
            return peer, tls
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            addr = parse_address(hop)
            if addr is None:
                return None, tls  # garbage in the chain: refuse to guess an address
            if not in_networks(addr, self.trusted):
                return str(addr), tls
        first = parse_address(hops[0]) if hops else None
        return (str(first) if first is not None else peer), tls
