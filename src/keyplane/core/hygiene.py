"""Key hygiene: which keys need attention and why, and when the unused-key policy warns and
revokes. Pure rules over a key, its owner's state and the time; no storage, no web."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from keyplane.core import scopes as sc
from keyplane.core.errors import ValidationError
from keyplane.core.model import ApiKey


class Reason(StrEnum):
    NEVER_USED = "never_used"  # never verified, and older than NEVER_USED_GRACE
    UNUSED = "unused"  # not verified for ``unused_days`` (never-used keys: since creation)
    NO_EXPIRY = "no_expiry"
    EXPIRING = "expiring"  # expires within ``expiring_days``
    EXPIRED = "expired"  # past its expiry but not revoked
    OWNER_DISABLED = "owner_disabled"
    # holds scopes that write (anything but ``*:read`` / ``keys:verify``) and had no valid
    # verification in the last ``unused_days``: usage counts do not say which scope a request
    # needed, so this is the narrowest "broader than used" the data supports
    WRITE_SCOPES_UNUSED = "write_scopes_unused"
    # used in the last ``unused_days``, and its verifier names the scopes each request needs
    # (per-scope usage counts), but some of the key's scopes were never needed
    SCOPES_UNUSED = "scopes_unused"


REASONS: tuple[str, ...] = tuple(r.value for r in Reason)

NEVER_USED_GRACE = timedelta(days=7)  # a new key is not "never used" before it had a chance
DEFAULT_UNUSED_DAYS = 90
DEFAULT_EXPIRING_DAYS = 14
MAX_REPORT_DAYS = 3650
READ_ONLY_ACTIONS = frozenset({"read", "verify"})

# revoke_unused_after_days: bounds, and how long before the revocation the owner is warned
MIN_REVOKE_UNUSED_DAYS = 7
MAX_REVOKE_UNUSED_DAYS = 3650
WARN_DAYS = 7


@dataclass(frozen=True)
class Thresholds:
    unused_days: int = DEFAULT_UNUSED_DAYS
    expiring_days: int = DEFAULT_EXPIRING_DAYS

    def __post_init__(self) -> None:
        for name in ("unused_days", "expiring_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    1 <= value <= MAX_REPORT_DAYS):
                raise ValidationError(f"{name} must be a whole number of days from 1 to "
                                      f"{MAX_REPORT_DAYS}", field=name)


def writes(scopes: list[str]) -> list[str]:
    """The scopes that may change data (not ``*:read`` or ``keys:verify``)."""
    return [s for s in scopes if s.partition(":")[2] not in READ_ONLY_ACTIONS]


def last_activity(key: ApiKey) -> datetime:
    """When the key was last used, or created if it never was."""
    return key.last_used_at if key.last_used_at is not None else key.created_at


def unused_scopes(scopes: list[str], used: set[str]) -> list[str]:
    """The key's scopes that granted none of the scopes its uses needed (``area:write`` is
    used by a use that needed ``area:read`` too: it granted it)."""
    return [s for s in scopes if not (sc.expand([s]) & used)]


def reasons(key: ApiKey, now: datetime, t: Thresholds, *,
            owner_enabled: bool = True, used_scopes: set[str] | None = None) -> list[Reason]:
    """Why a live (not revoked) key needs attention; empty when it does not. ``used_scopes``:
    the scopes its valid uses needed in the last ``unused_days`` (None or empty: unknown, its
    verifier does not name them)."""
    out: list[Reason] = []
    if key.last_used_at is None and now - key.created_at >= NEVER_USED_GRACE:
        out.append(Reason.NEVER_USED)
    idle = now - last_activity(key) >= timedelta(days=t.unused_days)
    if idle:
        out.append(Reason.UNUSED)
    if key.expires_at is None:
        out.append(Reason.NO_EXPIRY)
    elif key.expires_at <= now:
        out.append(Reason.EXPIRED)
    elif key.expires_at - now <= timedelta(days=t.expiring_days):
        out.append(Reason.EXPIRING)
    if not owner_enabled and key.owner_id is not None:
        out.append(Reason.OWNER_DISABLED)
    if idle and writes(key.scopes):
        out.append(Reason.WRITE_SCOPES_UNUSED)
    if used_scopes and not idle and unused_scopes(key.scopes, used_scopes):
        out.append(Reason.SCOPES_UNUSED)
    return out


class Step(StrEnum):
    NONE = "none"
    WARN = "warn"
    REVOKE = "revoke"


def warn_lead(after_days: int) -> timedelta:
    """How long before the revocation the owner is warned: WARN_DAYS, or half the period
    when that is shorter (a 7-day policy warns after 4 days unused)."""
    return timedelta(days=min(WARN_DAYS, after_days // 2))


def unused_step(key: ApiKey, now: datetime, after_days: int,
                warned_at: datetime | None) -> Step:
    """What the unused-key policy does to a live key now. A key is revoked only when it was
    warned at least ``warn_lead`` ago and has not been used since the warning; a warning given
    before a later use no longer counts (the key is warned again if it goes idle again)."""
    if key.revoked_at is not None:
        return Step.NONE
    activity = last_activity(key)
    lead = warn_lead(after_days)
    if now - activity < timedelta(days=after_days) - lead:
        return Step.NONE
    if warned_at is None or warned_at < activity:
        return Step.WARN
    if now - activity >= timedelta(days=after_days) and now - warned_at >= lead:
        return Step.REVOKE
    return Step.NONE
