"""Public identifiers: ``<kind>_`` + a millisecond timestamp + random base62.

Ids sort by creation time, so cursor pagination can use the id alone.
"""

from __future__ import annotations

import secrets
import time

from keyplane.core.tokens import ALPHABET, base62

_RANDOM_LENGTH = 14


def new_id(kind: str, now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = "".join(secrets.choice(ALPHABET) for _ in range(_RANDOM_LENGTH))
    return f"{kind}_{base62(ms, 8)}{rand}"
