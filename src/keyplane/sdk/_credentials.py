"""Where a request carries its key, and whether it is worth asking Keyplane about.

The key is read from ``Authorization: Bearer <key>``, ``Authorization: Bearer <name>:<key>``,
``X-API-Key`` or one of the configured legacy headers, in that order; the rule is the server's
(``keyplane.web.credentials``), checked against it by ``tests/sdk/test_protocol_contract.py``:

- the first ``Authorization`` header decides when it is ``Bearer <credential>`` (the scheme in
  any case, the credential not blank); when the first one is anything else, no later
  ``Authorization`` header counts;
- otherwise the first ``X-API-Key`` when it is not blank, else the first legacy header when it
  is not blank; their value may also be ``Bearer <credential>``;
- a credential is ``<key>`` or ``<name>:<key>``.

A key that is not
well-formed (Keyplane's checksum, or an imported key's shape when those are accepted) is
refused offline: Keyplane is never asked about a typo or a random string.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from keyplane.sdk._protocol import foreign_shape, prefix_of

__all__ = ["MAX_KEY_LENGTH", "Credentials"]

MAX_KEY_LENGTH = 256  # longer is refused before anything is computed from it


class Credentials:
    """``legacy_headers``: other header names that may carry the key. ``key_prefixes``:
    accepted prefixes (``None``: any well-formed). ``imported_keys``: also accept the shape of
    keys imported in a foreign format."""

    def __init__(self, legacy_headers: Iterable[str] = (),
                 key_prefixes: Collection[str] | None = None,
                 imported_keys: bool = False) -> None:
        self.legacy = frozenset(h.strip().lower().encode("latin-1") for h in legacy_headers
                                if h.strip())
        self.prefixes = frozenset(key_prefixes) if key_prefixes is not None else None
        self.imported = imported_keys

    def extract(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        """The key an ASGI request's headers carry (its bytes, as sent: a key is ASCII), or
        ``None`` (or empty: ``<name>:`` carries none).

        On the hot path of every request: each step here is paid per header, so the usual
        case (the first ``Authorization`` is ``Bearer …``) ends the scan there."""
        found: bytes | None
        api = legacy = None
        names = self.legacy
        for name, value in headers:
            if name == b"authorization":
                # "Bearer <key>": the scheme is case-insensitive (lower-cased only when it is
                # not sent as usual), the rest must not be blank
                if ((scheme := value[:7]) == b"Bearer " or scheme.lower() == b"bearer ") and (
                        rest := value[7:]).strip():
                    found = rest
                    break
                # the first Authorization is not a Bearer credential: no later one counts
                return self.extract([h for h in headers if h[0] != b"authorization"])
            if name == b"x-api-key":
                if api is None:
                    api = value
            elif names and legacy is None and name in names:
                legacy = value
        else:
            return self._named(api, legacy)
        # "<name>:<key>" is accepted too; a key never contains ':' (not `b":" in found`: for
        # bytes, `in` first tries its operand as an integer and formats a TypeError)
        return found.rpartition(b":")[2].strip()

    @staticmethod
    def _named(api: bytes | None, legacy: bytes | None) -> bytes | None:
        """The key in ``X-API-Key``'s value when it is not blank, else in the legacy header's:
        ``[Bearer ]<key>`` or ``[Bearer ]<name>:<key>``."""
        for value in (api, legacy):
            if value is not None and (value := value.strip()):
                if value[:7].lower() == b"bearer ":
                    value = value[7:]
                return value.rpartition(b":")[2].strip()
        return None

    def well_formed(self, raw: str) -> bool:
        """Whether Keyplane may know ``raw``: its checksum (and an accepted prefix), or the
        shape of an imported key when those are accepted."""
        if len(raw) > MAX_KEY_LENGTH:
            return False
        return prefix_of(raw, self.prefixes) is not None or (
            self.imported and foreign_shape(raw))
