"""Verification outcomes: every denial carries a code and a reason a person can read."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar


class Code(StrEnum):
    VALID = "VALID"
    MALFORMED = "MALFORMED"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"
    DISABLED = "DISABLED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    TLS_REQUIRED = "TLS_REQUIRED"
    RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True, slots=True)
class Denied:
    code: Code
    reason: str
    valid: ClassVar[bool] = False  # a class attribute: read on every request, no call


@dataclass(frozen=True, slots=True)
class Allowed:
    code: Code = Code.VALID
    reason: str = "the key is valid"
    valid: ClassVar[bool] = True


Decision = Allowed | Denied
ALLOWED = Allowed()
