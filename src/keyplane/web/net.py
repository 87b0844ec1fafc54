"""Who is calling, and over what: client address and TLS, trusting forwarded headers only from
configured proxies (the rightmost untrusted X-Forwarded-For hop is the client)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import HTTPConnection

from keyplane.core.policy import Address, Network, address_allowed, parse_address


def _header(conn: HTTPConnection, name: str) -> str | None:
    return conn.headers.get(name)


def _peer(conn: HTTPConnection) -> Address | None:
    """The socket's peer; a link-local peer's zone id (``%eth0``, from the kernel) is dropped,
    where a zone id in a header or a body is refused."""
    return parse_address(conn.client.host.partition("%")[0] if conn.client else None)


def client_address(conn: HTTPConnection, trusted: Sequence[Network]) -> Address | None:
    peer = _peer(conn)
    if not trusted or peer is None or not address_allowed(peer, trusted):
        return peer
    forwarded = _header(conn, "x-forwarded-for")
    if not forwarded:
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = parse_address(hop)
        if addr is None:
            return None  # garbage in the chain: refuse to guess
        if not address_allowed(addr, trusted):
            return addr
    return parse_address(hops[0]) if hops else peer


def is_tls(conn: HTTPConnection, trusted: Sequence[Network]) -> bool:
    if conn.scope.get("scheme") in ("https", "wss"):
        return True
    peer = _peer(conn)
    if trusted and peer is not None and address_allowed(peer, trusted):
        proto = _header(conn, "x-forwarded-proto")
        if proto:
            return proto.split(",")[-1].strip().lower() == "https"
    return False
