"""Keys imported from elsewhere: the foreign formats Keyplane accepts, and the legacy digest
schemes it can check until a key's first use upgrades its digest to Keyplane's keyed HMAC.

A foreign key keeps its own format (no Keyplane checksum), so nothing can refuse a typo before
storage is asked; :func:`foreign_shape` bounds what is asked at all. Legacy schemes:

``drf``: djangorestframework-api-key. A key is ``<prefix>.<secret>``; the library stores the
prefix in clear and Django's password-hasher encoding of the whole key: ``sha512$$<hex>``
(its own ``Sha512ApiKeyHasher``, 1.5+) or ``pbkdf2_sha256$<iterations>$<salt>$<base64>``
(Django's default hasher, which older versions used). The key is found by its prefix, then
its digest is compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime

DRF = "drf"
SCHEMES = (DRF,)
MIN_FOREIGN = 16
MAX_FOREIGN = 256
# what an imported key may look like: long enough to be a secret, and what an HTTP header
# carries unquoted and unambiguously (no space, no ':' which separates a key's name)
_FOREIGN = re.compile(r"\A[A-Za-z0-9._~+/=-]{" + f"{MIN_FOREIGN},{MAX_FOREIGN}" + r"}\Z")
FOREIGN_RULE = f"{MIN_FOREIGN} to {MAX_FOREIGN} characters of A-Z a-z 0-9 and . _ ~ + / = -"
_DRF_PREFIX = re.compile(r"\A[A-Za-z0-9]{1,40}\Z")
_MAX_ITERATIONS = 2_000_000


def foreign_shape(raw: str) -> bool:
    """Whether ``raw`` may be an imported key in a foreign format (cheap: one regex)."""
    return isinstance(raw, str) and _FOREIGN.match(raw) is not None


def drf_prefix(raw: str) -> str | None:
    """The prefix of a djangorestframework-api-key key ``<prefix>.<secret>``, or None."""
    prefix, dot, secret = raw.partition(".")
    if not dot or not secret or not _DRF_PREFIX.match(prefix):
        return None
    return prefix


def lookup(scheme: str, prefix: str) -> str:
    """The stored lookup of a legacy key: namespaced by scheme."""
    return f"{scheme}:{prefix}"


def lookups_of(raw: str) -> list[str]:
    """The lookups a presented foreign key could be stored under."""
    prefix = drf_prefix(raw)
    return [lookup(DRF, prefix)] if prefix is not None else []


def drf_supported(encoded: str) -> str | None:
    """Why a djangorestframework-api-key digest cannot be checked, or None when it can."""
    algorithm = encoded.partition("$")[0]
    if algorithm == "sha512":
        hexdigest = encoded.removeprefix("sha512$$")
        if encoded.startswith("sha512$$") and re.fullmatch(r"[0-9a-f]{128}", hexdigest):
            return None
        return "hashed_key: a malformed sha512 digest"
    if algorithm == "pbkdf2_sha256":
        parts = encoded.split("$")
        if len(parts) == 4 and parts[1].isdigit() and 0 < int(parts[1]) <= _MAX_ITERATIONS:
            return None
        return "hashed_key: a malformed pbkdf2_sha256 digest"
    return (f"hashed_key: the hasher {algorithm[:30]!r} is not supported "
            "(sha512 and pbkdf2_sha256 are)")


def matches(scheme: str, raw: str, encoded: str) -> bool:
    """Whether ``raw`` is the key ``encoded`` was made from (constant-time comparison)."""
    if scheme != DRF or drf_supported(encoded) is not None:
        return False
    if encoded.startswith("sha512$$"):
        computed = hashlib.sha512(raw.encode()).hexdigest()
        return hmac.compare_digest(computed, encoded[len("sha512$$"):])
    _algorithm, iterations, salt, stored = encoded.split("$", 3)
    derived = hashlib.pbkdf2_hmac("sha256", raw.encode(), salt.encode(), int(iterations))
    return hmac.compare_digest(base64.b64encode(derived).decode("ascii"), stored)


@dataclass(frozen=True)
class ImportRecord:
    """Where an imported key came from, and its legacy digest until the first use."""

    key_id: str
    source: str
    source_ref: str  # the key's id in its source, never a secret
    foreign: bool  # keeps a format that is not Keyplane's
    imported_at: datetime
    legacy_scheme: str | None = None
    legacy_lookup: str | None = None
    legacy_digest: str | None = None
