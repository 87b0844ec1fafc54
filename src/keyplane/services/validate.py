"""Input checks shared by the use cases; each failure names the field."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from keyplane.core import scopes as sc
from keyplane.core.errors import ValidationError
from keyplane.core.model import RateLimit
from keyplane.core.policy import normalise_networks

MAX_NAME = 200
MAX_DESCRIPTION = 1000
MAX_META_BYTES = 4096
MAX_META_DEPTH = 16
MAX_IPS = 100
MAX_SCOPES = 200  # scopes in one list (a key's, a group's, an app's)
MAX_GROUPS = 100  # groups one member or service account belongs to
MAX_GRACE_SECONDS = 90 * 86400
MAX_WINDOW_SECONDS = 86400
# A key's rate limit per window. The moving window keeps one timestamp per admitted request
# (Redis: about 20 MB at this size), and no deployment serves more than this to one key in a
# window; a key that needs more needs no limit. Larger numbers also break the Redis limiter's
# Lua script (2**63 and up are not Redis integers).
MAX_RATE_LIMIT = 1_000_000
MAX_DAYS = 3650  # key lifetimes and tenant expiry policies: ten years
MAX_REMAINING = 10**12  # a usage quota

# -- text hygiene ---------------------------------------------------------------------------
# The characters no human-entered text (names, descriptions, notes) may hold, as the body of
# one regex character class, used both here and as the ``pattern`` of those fields in
# /openapi.json (web/schemas.py), so the schema and the server agree. It is every control
# character but tab (Unicode Cc: C0, DEL, C1), every format character (Cf: bidirectional
# overrides and isolates U+202A-202E and U+2066-2069, marks U+200E/F and U+061C, zero-width
# space U+200B, word joiner and invisible operators U+2060-2064, BOM U+FEFF, soft hyphen U+00AD,
# interlinear annotations, the invisible tag characters U+E0001 and U+E0020-E007F ...) and the
# line and paragraph separators U+2028/2029. Allowed on purpose: zero-width joiner U+200D and
# non-joiner U+200C, which emoji sequences and Persian and Indic scripts need to be written
# correctly (they cannot reorder text, and look-alike names are possible without them anyway).
# Escapes are \uXXXX and \UXXXXXXXX (Python ``re`` syntax; tests/unit/test_validate.py proves
# the class is exactly that set for this Python's Unicode database).
FORBIDDEN_CHARS = (
    r"\u0000-\u0008\u000A-\u001F\u007F-\u009F\u00AD\u0600-\u0605\u061C\u06DD\u070F"
    r"\u0890-\u0891\u08E2\u180E\u200B\u200E-\u200F\u2028-\u202E\u2060-\u2064"
    r"\u2066-\u206F\uFEFF\uFFF9-\uFFFB\U000110BD\U000110CD\U00013430-\U00013438"
    r"\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0001\U000E0020-\U000E007F"
)
# what ``str.strip()`` removes that is not forbidden: a name needs one character besides these
BLANK_CHARS = r"\t \u00A0\u1680\u2000-\u200A\u202F\u205F\u3000"
TEXT_PATTERN = f"^[^{FORBIDDEN_CHARS}]*$"  # optional text: descriptions, notes
NAME_PATTERN = f"^[^{FORBIDDEN_CHARS}]*[^{FORBIDDEN_CHARS}{BLANK_CHARS}][^{FORBIDDEN_CHARS}]*$"
_FORBIDDEN_RE = re.compile(f"[{FORBIDDEN_CHARS}]")
_EMAIL_PART = rf"[^@\s{FORBIDDEN_CHARS}]"
EMAIL_PATTERN = rf"^{_EMAIL_PART}{{1,64}}@{_EMAIL_PART}{{1,255}}\.{_EMAIL_PART}{{2,}}$"
_EMAIL_RE = re.compile(EMAIL_PATTERN)


def forbidden_char(value: str) -> str | None:
    """The first character of ``value`` that human-entered text must not hold, or None."""
    found = _FORBIDDEN_RE.search(value)
    return found.group() if found else None


def text(value: Any, field: str, *, max_len: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    bad = forbidden_char(value)
    if bad is not None:
        kind = ("control" if unicodedata.category(bad) == "Cc"
                else "invisible or bidirectional-control")
        raise ValidationError(f"{field} must not contain {kind} characters (U+{ord(bad):04X})",
                              field=field)
    if len(value) > max_len:
        raise ValidationError(f"{field} must be at most {max_len} characters", field=field)
    out: str = value.strip()
    if required and not out:
        raise ValidationError(f"{field} must not be empty", field=field)
    return out


def email(value: Any, field: str = "email") -> str:
    out = text(value, field, max_len=320).lower()
    if not _EMAIL_RE.match(out):
        raise ValidationError(f"{field} is not an email address", field=field)
    return out


def scope_list(value: Any, catalogue: sc.Catalogue, field: str = "scopes") -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise ValidationError(f"{field} must be a list of strings", field=field)
    if len(value) > MAX_SCOPES:
        raise ValidationError(f"{field} may hold at most {MAX_SCOPES} scopes", field=field)
    unknown = catalogue.unknown(value)
    if unknown:
        raise ValidationError(f"{field}: unknown scope {unknown[0]!r}", field=field)
    return sc.normalise(value)


def ip_list(value: Any, field: str = "allowed_ips") -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValidationError(f"{field} must be a list of CIDRs", field=field)
    if len(value) > MAX_IPS:
        raise ValidationError(f"{field} may hold at most {MAX_IPS} entries", field=field)
    return normalise_networks(value, field)


def ratelimit(value: Any, field: str = "ratelimit") -> RateLimit | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"limit", "window_seconds"}:
        raise ValidationError(
            f"{field} must be an object with limit and window_seconds", field=field
        )
    limit, window = value.get("limit"), value.get("window_seconds", 60)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_RATE_LIMIT:
        raise ValidationError(f"{field}.limit must be an integer from 1 to {MAX_RATE_LIMIT}",
                              field=f"{field}.limit")
    if not isinstance(window, int) or isinstance(window, bool) or not (
        1 <= window <= MAX_WINDOW_SECONDS
    ):
        raise ValidationError(
            f"{field}.window_seconds must be an integer from 1 to {MAX_WINDOW_SECONDS}",
            field=f"{field}.window_seconds",
        )
    return RateLimit(limit=limit, window_seconds=window)


def meta(value: Any, field: str = "meta") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be an object", field=field)
    if _depth(value) > MAX_META_DEPTH:
        raise ValidationError(f"{field} may nest at most {MAX_META_DEPTH} levels", field=field)
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must hold only JSON values (no NaN or Infinity)",
                              field=field) from None
    if len(encoded) > MAX_META_BYTES:
        raise ValidationError(f"{field} must be at most {MAX_META_BYTES} bytes as JSON",
                              field=field)
    return dict(value)


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest (iteratively: no recursion limit to trip over)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list | tuple):
            deepest = max(deepest, level)
            if level > MAX_META_DEPTH:
                break
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{field} must be true or false", field=field)
    return value


def integer(value: Any, field: str, *, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{field} must be an integer", field=field)
    if not minimum <= value <= maximum:
        raise ValidationError(f"{field} must be between {minimum} and {maximum}", field=field)
    return value


def only_fields(body: dict[str, Any], allowed: Iterable[str]) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ValidationError(f"{extra[0]} is not a field that can be set here", field=extra[0])
