"""Public identifiers: ``<kind>_`` + a millisecond timestamp + random base62.

Ids sort by creation time, so cursor pagination can use the id alone. The timestamp is written
in lowercase base36 (digits, then a-z): that order is the same byte by byte (SQLite, PostgreSQL
``C``) and under the usual linguistic collations (``en_US``, ICU), which would interleave the
cases of a base62 timestamp and break newest-first order.
"""

from __future__ import annotations

import secrets
import time

from keyplane.core.tokens import base62

_RANDOM_LENGTH = 13  # 77 bits: unique within a millisecond; ids are not secrets
_TIME_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TIME_WIDTH = 9  # 36**9 ms: until the year 5188
_RANDOM_SPACE = 62**_RANDOM_LENGTH


def _time_part(ms: int) -> str:
    digits: list[str] = []
    while ms:
        ms, rem = divmod(ms, 36)
        digits.append(_TIME_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(_TIME_WIDTH, "0")


def new_id(kind: str, now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    # one draw, uniform over every 13-character base62 string (13 secrets.choice calls cost
    # 10x more: an import of 100,000 keys makes 200,000 ids)
    rand = base62(secrets.randbelow(_RANDOM_SPACE), _RANDOM_LENGTH)
    return f"{kind}_{_time_part(ms)}{rand}"
