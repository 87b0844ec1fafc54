"""Events Keyplane raises on its own and events the product reports. Pure: no I/O.

- Expiry reminders: ``key.expiring`` 14, 7 and 1 days before a key expires, ``key.expired``
  once it has. Each (key, threshold, expiry) is sent once: a renewed or rotated key (a new
  ``expires_at``) gets fresh reminders. A run sends only the nearest threshold that is due, so a
  key made with 5 days left gets the 7-day reminder, not the 14-day one as well.
- Where a key is used from: addresses are kept per network (an IPv4 /24, an IPv6 /64), the
  most recently seen :data:`KNOWN_NETWORKS` per key.
- Product events and automations: ``POST /v1/events`` reports what the product's API did
  (``contact.created``); a tenant's automation rules send matching events to its webhooks.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyplane.core.errors import ValidationError
from keyplane.core.webhooks import EVENT_TYPES

# -- expiry reminders ---------------------------------------------------------------------------

REMINDER_DAYS: tuple[int, ...] = (14, 7, 1)  # largest first
EXPIRED = 0  # the threshold of key.expired
# key.expired is sent for keys that expired this recently (a scheduler that was off for longer
# does not wake everyone up about keys that expired long ago)
EXPIRED_LOOKBACK = timedelta(days=7)


def due_threshold(expires_at: datetime, now: datetime) -> int | None:
    """The reminder due for a key expiring at ``expires_at``: the nearest of
    :data:`REMINDER_DAYS` that has been reached, :data:`EXPIRED` once it has expired (within
    :data:`EXPIRED_LOOKBACK`), or ``None``."""
    left = expires_at - now
    if left <= timedelta(0):
        return EXPIRED if -left < EXPIRED_LOOKBACK else None
    due = None
    for days in REMINDER_DAYS:
        if left <= timedelta(days=days):
            due = days
    return due


def threshold_window(threshold: int, now: datetime) -> tuple[datetime, datetime]:
    """Expiry times (exclusive start, inclusive end) for which ``threshold`` is the due one."""
    if threshold == EXPIRED:
        return now - EXPIRED_LOOKBACK, now
    smaller = [d for d in REMINDER_DAYS if d < threshold]
    low = now + timedelta(days=max(smaller)) if smaller else now
    return low, now + timedelta(days=threshold)


def days_left(expires_at: datetime, now: datetime) -> int:
    """Whole days left, rounded up (a key expiring in 6 days 2 hours has 7 days left)."""
    seconds = (expires_at - now).total_seconds()
    return max(0, -int(-seconds // 86400))


# -- where keys are used from -------------------------------------------------------------------

KNOWN_NETWORKS = 20  # networks remembered per key (the most recently seen)


def network_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The network a use is attributed to: the /24 of an IPv4 address, the /64 of an IPv6 one
    (a home or office line changes its last bits; a new network is news)."""
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


# -- product events and automations ------------------------------------------------------------

# Keyplane's own event areas: a product cannot report (forge) them
RESERVED_AREAS = frozenset(t.split(".", 1)[0] for t in EVENT_TYPES)
_PART = r"[a-z][a-z0-9_]{0,39}"
_NOT_RESERVED = rf"(?!(?:{'|'.join(sorted(RESERVED_AREAS))})\.)"
# what a product event's type looks like: area.verb, lowercase (contact.created)
EVENT_TYPE_PATTERN = rf"^{_NOT_RESERVED}{_PART}\.{_PART}$"
# a rule's event: a type, area.* (every verb of an area) or *.verb (that verb on any record)
RULE_EVENT_PATTERN = rf"^{_NOT_RESERVED}(?!\*\.\*$)(?:{_PART}|\*)\.(?:{_PART}|\*)$"
MAX_DATA_BYTES = 65_536
MAX_RULE_WEBHOOKS = 10


def _reserved(value: str, field_name: str, hint: str) -> None:
    area = value.split(".", 1)[0]
    if area in RESERVED_AREAS:
        raise ValidationError(f"{field_name}: {area}.* events are Keyplane's own; {hint}",
                              field=field_name)


def product_event_type(value: Any, field_name: str = "type") -> str:
    if isinstance(value, str):
        _reserved(value, field_name, "name your product's records (contact.created)")
    if not isinstance(value, str) or not re.fullmatch(EVENT_TYPE_PATTERN[1:-1], value):
        raise ValidationError(
            f"{field_name}: an event type is area.verb in lowercase letters, digits and _ "
            "(e.g. contact.created)", field=field_name)
    return value


def rule_event(value: Any, field_name: str = "event") -> str:
    if isinstance(value, str):
        _reserved(value, field_name, "subscribe a webhook to them instead")
    if not isinstance(value, str) or not re.fullmatch(RULE_EVENT_PATTERN[1:-1], value):
        raise ValidationError(
            f"{field_name}: an event type (contact.created), every verb of an area "
            "(contact.*) or one verb on any record (*.created)", field=field_name)
    return value


def event_matches(pattern: str, event_type: str) -> bool:
    area, verb = pattern.split(".", 1)
    e_area, e_verb = event_type.split(".", 1)
    return area in ("*", e_area) and verb in ("*", e_verb)


@dataclass(frozen=True)
class Source:
    """Through what the product's API call was made: resolved from the key or token it was
    made with."""

    tenant_id: str
    key_id: str  # the key's id, or the OAuth access token's id
    principal_id: str | None  # the API user: the key's owner (a member or service account)
    app_id: str | None = None  # the connected app, for an OAuth access token


@dataclass
class Automation:
    """"When ``event`` happens through the API (only through this key, API user or connected
    app, when set), send it to these webhooks." Infusionsoft's action sets: one rule for
    records the API creates (``contact.created``), another for those it updates."""

    id: str
    tenant_id: str
    name: str
    event: str
    webhook_ids: list[str]
    created_at: datetime
    updated_at: datetime
    enabled: bool = True
    description: str = ""
    key_id: str | None = None
    principal_id: str | None = None
    app_id: str | None = None
    created_by: str | None = None

    def matches(self, event_type: str, source: Source) -> bool:
        return (self.enabled and source.tenant_id == self.tenant_id
                and event_matches(self.event, event_type)
                and (self.key_id is None or self.key_id == source.key_id)
                and (self.principal_id is None or self.principal_id == source.principal_id)
                and (self.app_id is None or self.app_id == source.app_id))
