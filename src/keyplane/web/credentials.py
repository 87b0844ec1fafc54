"""Where a credential is read from, for every route that reads one (the SDK's middleware keeps
the same rule in ``keyplane.sdk._credentials``; ``tests/sdk/test_protocol_contract.py`` runs
both on the same headers):

- the first ``Authorization`` header decides when it is ``Bearer <credential>`` (the scheme in
  any case, the credential not blank); when the first one is anything else, no later
  ``Authorization`` header counts;
- otherwise the first ``X-API-Key`` when it is not blank, else the first of the configured
  legacy headers (``KEYPLANE_LEGACY_HEADERS``) when it is not blank; their value may also be
  ``Bearer <credential>``;
- a credential is ``<key>`` or ``<name>:<key>``.
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
    """The key in the headers :func:`presented` found, or None. (Bytes throughout, as the SDK
    reads them: only ASCII whitespace is blank or stripped.)"""
    auth, api, other = found
    if auth is not None:
        scheme, _, rest = auth.partition(b" ")
        if scheme.lower() == b"bearer" and rest.strip():
            return _unnamed(rest)
    for value in (api, other):
        if value is not None and (value := value.strip()):
            scheme, space, rest = value.partition(b" ")
            return _unnamed(rest if space and scheme.lower() == b"bearer" else value)
    return None


def _unnamed(credential: bytes) -> str | None:
    """The key in ``<key>`` or ``<name>:<key>`` (None when that is blank)."""
    return credential.rpartition(b":")[2].strip().decode("latin-1") or None


def from_headers(headers: Iterable[tuple[bytes, bytes]], legacy: frozenset[bytes]) -> str | None:
    """The key a request presents in its headers, or None."""
    return credential_in(presented(headers, legacy))
