"""Password hashing (argon2id through pwdlib)."""

from __future__ import annotations

from functools import lru_cache

from pwdlib import PasswordHash

MIN_PASSWORD = 12
MAX_PASSWORD = 1024


@lru_cache(maxsize=1)
def _hasher() -> PasswordHash:
    return PasswordHash.recommended()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
    if hashed is None:
        _hasher().hash(password)  # spend the same time whether or not the account exists
        return False
    return bool(_hasher().verify(password, hashed))
