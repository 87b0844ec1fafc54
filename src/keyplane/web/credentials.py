"""Where a credential is read from: ``Authorization: Bearer <key>`` or ``Bearer <name>:<key>``,
then ``X-API-Key``, then the configured legacy headers (``KEYPLANE_LEGACY_HEADERS``), the first
of each, in that order — the same rule as the SDK's middleware, for every route that reads one.
"""

from __future__ import annotations

from collections.abc import Iterable


def legacy_names(names: Iterable[str]) -> frozenset[bytes]:
    """The configured legacy header names as ASGI spells them (lower case bytes)."""
    return frozenset(n.strip().lower().encode("latin-1") for n in names if n.strip())


def key_in(value: str) -> str:
    """The key in a credential value: ``<key>``, ``<name>:<key>``, ``Bearer <key>`` or
    ``Bearer <name>:<key>`` (a key never holds ':' or a space)."""
    value = value.strip()
    scheme, space, rest = value.partition(" ")
    if space and scheme.lower() == "bearer":
        value = rest
    return value.rpartition(":")[2].strip()


Presented = tuple[bytes | None, bytes | None, bytes | None]


def presented(headers: Iterable[tuple[bytes, bytes]], legacy: frozenset[bytes]) -> Presented:
    """The first ``Authorization``, ``X-API-Key`` and legacy header, as sent (or None): all
    that decides the credential a request presents (:func:`credential_in`)."""
    auth = api = other = None
    for name, value in headers:
        if name == b"authorization":
            if auth is None:
                auth = value
        elif name == b"x-api-key":
            if api is None:
                api = value
        elif other is None and name in legacy:
            other = value
    return auth, api, other


def credential_in(found: Presented) -> str | None:
    """The key in the headers :func:`presented` found, or None."""
    auth, api, other = found
    if auth is not None:
        scheme, _, rest = auth.partition(b" ")
        if scheme.lower() == b"bearer" and rest.strip():
            return key_in(rest.decode("latin-1")) or None
    for value in (api, other):
        if value is not None and value.strip():
            return key_in(value.decode("latin-1")) or None
    return None


def from_headers(headers: Iterable[tuple[bytes, bytes]], legacy: frozenset[bytes]) -> str | None:
    """The key a request presents in its headers, or None."""
    return credential_in(presented(headers, legacy))
