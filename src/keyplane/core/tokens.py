"""The credential format: ``<prefix>_<body><check>``.

``body`` is 32 base62 characters from the OS CSPRNG (about 190 bits); ``check`` is the CRC32 of
``<prefix>_<body>`` written as 6 base62 characters, so a typo or a random string is refused before
any storage is touched, and secret scanners can match keys with few false positives.

Only a keyed digest is stored: ``HMAC-SHA-256(pepper, key)``. Peppers carry an id so they can be
rotated: digests made under an older pepper still verify while that pepper is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Collection
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 32
CHECK_LENGTH = 6
START_LENGTH = 8
MAX_BODY_LENGTH = 128
_PREFIX_RE = re.compile(r"\A[a-z][a-z0-9]{1,15}\Z")  # not "$": it accepts a final newline
_BODY_SPACE = len(ALPHABET) ** BODY_LENGTH


def base62(number: int, width: int) -> str:
    """``number`` in base62, left-padded with ``0`` to ``width`` characters."""
    if number < 0:
        raise ValueError("number must be non-negative")
    digits: list[str] = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    text = "".join(reversed(digits)) or "0"
    return text.rjust(width, "0")


_VALID_PREFIXES: set[str] = set()  # configured prefixes already checked by valid_prefix()
# every two-digit base62 number: a CRC32 (< 62**6) is three table lookups, not six divisions
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]


def _check_digits(crc: int) -> str:
    """``base62(crc, CHECK_LENGTH)`` for a CRC32."""
    high, rest = divmod(crc, 14_776_336)  # 62**4
    mid, low = divmod(rest, 3844)  # 62**2
    return _PAIRS[high] + _PAIRS[mid] + _PAIRS[low]


def checksum(prefix: str, body: str) -> str:
    return _check_digits(zlib.crc32(f"{prefix}_{body}".encode()))


def valid_prefix(prefix: str) -> bool:
    return bool(_PREFIX_RE.match(prefix))


# What secret scanners match: the prefix, "_", then 32 to 122 base62 characters of body and the
# 6 check characters, standing alone (no letter, digit or "_" on either side). The CRC32 in the
# last 6 characters is what the scanner (or :func:`parse`) checks afterwards.
_RUN = f"{BODY_LENGTH + CHECK_LENGTH},{MAX_BODY_LENGTH}"  # "38,128"
KEY_PATTERN = r"\b{prefix}_[0-9A-Za-z]{{" + _RUN + r"}}\b"


def key_regex(prefix: str) -> str:
    """The regular expression of credentials with ``prefix`` (as published for scanners)."""
    if not valid_prefix(prefix):
        raise ValueError("prefix must be 2-16 lowercase letters or digits, starting with a letter")
    return KEY_PATTERN.format(prefix=prefix)


def find_keys(text: str, prefix: str) -> list[str]:
    """Every checksum-valid credential with ``prefix`` standing in ``text``."""
    found = re.findall(key_regex(prefix), text, flags=re.ASCII)
    return [raw for raw in found if prefix_of(raw, (prefix,)) is not None]


def generate(prefix: str) -> str:
    """A new secret credential with ``prefix``; the body comes from :mod:`secrets`."""
    if not valid_prefix(prefix):
        raise ValueError("prefix must be 2-16 lowercase letters or digits, starting with a letter")
    # one draw, uniform over all 62**32 bodies (as 32 secrets.choice calls, 5x cheaper)
    body = base62(secrets.randbelow(_BODY_SPACE), BODY_LENGTH)
    return f"{prefix}_{body}{checksum(prefix, body)}"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    prefix: str
    body: str
    raw: str

    @property
    def start(self) -> str:
        """The first characters after the prefix, kept in clear to recognise a key in lists."""
        return self.body[:START_LENGTH]


def prefix_of(raw: str, prefixes: Collection[str] | None = None) -> str | None:
    """The prefix of ``raw`` if it is a well-formed, checksum-valid credential, else ``None``.

    :func:`parse` without building the parsed object (the verification hot path). Costs a
    CRC32 and touches no storage. ``prefixes`` restricts the accepted prefixes.
    """
    if not isinstance(raw, str) or len(raw) > MAX_BODY_LENGTH + 20:
        return None
    prefix, sep, rest = raw.partition("_")
    if not sep or (prefixes is not None and prefix not in prefixes):
        return None
    if prefix not in _VALID_PREFIXES:
        if not valid_prefix(prefix):
            return None
        if prefixes is not None:  # only configured prefixes are remembered: bounded
            _VALID_PREFIXES.add(prefix)
    if len(rest) < BODY_LENGTH + CHECK_LENGTH or len(rest) > MAX_BODY_LENGTH:
        return None
    if not (rest.isascii() and rest.isalnum()):  # ASCII letters and digits: base62
        return None
    # raw[:-CHECK_LENGTH] is "<prefix>_<body>", what the checksum covers
    expected = _check_digits(zlib.crc32(raw[:-CHECK_LENGTH].encode()))
    if not hmac.compare_digest(rest[-CHECK_LENGTH:], expected):
        return None
    return prefix


def parse(raw: str, prefixes: Collection[str] | None = None) -> ParsedKey | None:
    """Parse and checksum-verify ``raw``; ``None`` when it is not a well-formed credential.

    Costs a CRC32 and touches no storage. ``prefixes`` restricts the accepted prefixes.
    """
    prefix = prefix_of(raw, prefixes)
    if prefix is None:
        return None
    return ParsedKey(prefix=prefix, body=raw[len(prefix) + 1:-CHECK_LENGTH], raw=raw)


@dataclass(frozen=True, slots=True)
class Pepper:
    """A server-side secret mixed into every stored digest; never stored in the database."""

    id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"Pepper(id={self.id!r}, secret=<hidden>)"


class Hasher:
    """Keyed digests with a current pepper and older ones still accepted."""

    def __init__(self, peppers: list[Pepper]) -> None:
        if not peppers:
            raise ValueError("at least one pepper is required")
        self.current = peppers[0]
        self._by_id = {p.id: p for p in peppers}

    @property
    def pepper_ids(self) -> list[str]:
        return list(self._by_id)

    def digest(self, raw: str, pepper_id: str | None = None) -> str:
        pepper = self.current if pepper_id is None else self._by_id[pepper_id]
        return hmac.new(pepper.secret, raw.encode(), hashlib.sha256).hexdigest()

    def candidates(self, raw: str) -> list[tuple[str, str]]:
        """``(pepper_id, digest)`` for every configured pepper, the current one first."""
        return [(pid, self.digest(raw, pid)) for pid in self._by_id]

    def matches(self, raw: str, pepper_id: str, stored_digest: str) -> bool:
        if pepper_id not in self._by_id:
            return False
        return hmac.compare_digest(self.digest(raw, pepper_id), stored_digest)


# anything shaped like a credential of any type and any prefix (keys, OAuth access and refresh
# tokens, client secrets, codes), checksum or not, also with a percent-encoded "_"; ids
# ("key_" and 22 characters) are far shorter than a credential's body
_SECRET_SHAPE = re.compile(
    r"(?<![0-9A-Za-z])([a-z][a-z0-9]{1,15})(?:_|%5[Ff])([0-9A-Za-z]{"
    + str(BODY_LENGTH + CHECK_LENGTH) + r",})")
_SECRET_BODY = re.compile(r"(?:_|%5[Ff])[0-9A-Za-z]{" + str(BODY_LENGTH + CHECK_LENGTH) + "}")
REDACTED = "[redacted]"


def redact_secrets(text: str) -> str:
    """``text`` with every credential-shaped string cut to its prefix and its first
    characters (the part lists show, to recognise it): ``kp_AbCdEfGh[redacted]``. Cheap when
    there is nothing to redact (no ``_`` and no ``%5``)."""
    if ("_" not in text and "%5" not in text) or not _SECRET_BODY.search(text):
        return text
    return _SECRET_SHAPE.sub(_cut, text)


def _cut(found: re.Match[str]) -> str:
    return f"{found.group(1)}_{found.group(2)[:START_LENGTH]}{REDACTED}"


def fingerprint(raw: str) -> str:
    """A short public SHA-256 fragment of a secret, safe for logs and leak reports."""
    return hashlib.sha256(raw.encode()).hexdigest()[:12]
