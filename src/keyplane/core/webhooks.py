"""Webhooks: the event catalogue, subscription patterns, URL and address rules, the retry
schedule and the rule that disables an endpoint that keeps failing. Pure: no I/O.

An event is written to the outbox in the transaction of the change it reports; each endpoint
subscribed to it gets one *delivery*, tried until it succeeds or its retry window ends. Every
attempt of one event carries the same ``webhook-id`` (the event id), so receivers deduplicate.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from keyplane.core.errors import ValidationError

#: Every event type a webhook can subscribe to; ``prefix.*`` and ``*`` patterns match these.
EVENT_TYPES: frozenset[str] = frozenset({
    "key.created", "key.updated", "key.rotated", "key.locked", "key.unlocked", "key.revoked",
    "key.unused_warning", "key.expiring", "key.expired", "key.used_from_new_ip",
    "key.denied_burst",
    "member.created", "member.updated", "member.deleted",
    "service_account.created", "service_account.updated", "service_account.deleted",
    "connection.authorized", "connection.revoked",
    "app.approved", "app.suspended",
    "webhook.disabled",
})

MAX_URL_LENGTH = 2048

#: Every subscription pattern a webhook accepts: a type, ``area.*``, or ``*``.
EVENT_PATTERNS: tuple[str, ...] = tuple(sorted(
    EVENT_TYPES | {t.split(".", 1)[0] + ".*" for t in EVENT_TYPES} | {"*"}))

# The URL syntax a webhook accepts, as one pattern for the server and for /openapi.json: a host
# name or IPv4 address (ASCII: an internationalised name goes in its xn-- form), an optional
# port 1-65535, then path and query of URL characters (%-escape the rest); never credentials,
# spaces or a #fragment.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = (r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
         r"|[1-9][0-9]{0,3}))?")
_REST = r"(?:[/?][-!$&'()*+,;=:@%/?A-Za-z0-9._~]*)?"


def url_pattern(allow_http: bool) -> str:
    """The webhook URL syntax: ``https`` only, or ``http`` too where private targets are
    allowed."""
    scheme = "https?" if allow_http else "https"
    return rf"^{scheme}://{_LABEL}(?:\.{_LABEL})*{_PORT}{_REST}$"
MAX_PATTERNS = 50
SECRET_PREFIX = "whsec_"


def event_patterns(value: Any, field_name: str = "events") -> list[str]:
    """The subscription list, validated: catalogue names, ``area.*`` or ``*``."""
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{field_name}: a non-empty list of event types, e.g. "
                              '["key.*"]', field=field_name)
    if len(value) > MAX_PATTERNS:
        raise ValidationError(f"{field_name}: at most {MAX_PATTERNS} entries", field=field_name)
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValidationError(f"{field_name}: every entry is a string", field=field_name)
        known = item == "*" or item in EVENT_TYPES or (
            item.endswith(".*") and any(t.startswith(item[:-1]) for t in EVENT_TYPES))
        if not known:
            raise ValidationError(
                f"{field_name}: {item!r} is not an event type; known types: "
                f"{', '.join(sorted(EVENT_TYPES))} (or 'area.*', or '*')", field=field_name)
        if item not in out:
            out.append(item)
    return out


def subscribed(patterns: Iterable[str], event_type: str) -> bool:
    for p in patterns:
        if p == "*" or p == event_type or (p.endswith(".*") and event_type.startswith(p[:-1])):
            return True
    return False


# -- where a webhook may point ---------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def check_url(url: Any, *, allow_private: bool, field_name: str = "url") -> Target:
    """``https`` only (``http`` too when private targets are allowed), no credentials, a host.

    Where the host resolves is checked separately (:func:`refused_address`), at validation and
    again at every connection.
    """
    if not isinstance(url, str) or not url:
        raise ValidationError(f"{field_name}: a URL is required", field=field_name)
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"{field_name}: at most {MAX_URL_LENGTH} characters",
                              field=field_name)
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationError(f"{field_name}: must not contain spaces or control characters",
                              field=field_name)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationError(f"{field_name}: not a valid URL", field=field_name) from None
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise ValidationError(
            f"{field_name}: must start with https://"
            + ("" if allow_private else " (plain http is allowed only when "
               "KEYPLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS is set)"), field=field_name)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(f"{field_name}: must not contain credentials (user:password@)",
                              field=field_name)
    if not parts.hostname:
        raise ValidationError(f"{field_name}: names no host", field=field_name)
    if parts.fragment or "#" in url:
        raise ValidationError(f"{field_name}: must not have a #fragment", field=field_name)
    if parts.netloc.startswith("["):
        raise ValidationError(f"{field_name}: IPv6 address literals are not accepted; use a "
                              "host name", field=field_name)
    if not re.fullmatch(url_pattern(allow_private)[1:-1], url):
        raise ValidationError(
            f"{field_name}: not a URL webhooks accept: an ASCII host name or IPv4 address "
            "(xn-- for international names), an optional port from 1 to 65535, and a path of "
            "URL characters (%-escape the rest)", field=field_name)
    return Target(parts.scheme, parts.hostname,
                  port or (443 if parts.scheme == "https" else 80))


def refused_address(address: str) -> str | None:
    """Why a webhook must not connect to ``address`` (an IP), or ``None`` when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "an unspecified address (this host)"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


# -- retries and giving up -------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, within a window counted from the event."""

    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(hours=1)
    window: timedelta = timedelta(hours=24)
    disable_after: timedelta = timedelta(hours=24)  # every attempt failed for this long

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """Wait before attempt ``attempts + 1``: base * 2**(attempts-1), capped, then a
        random 50-100% of it ("equal jitter"), so failed endpoints are not hit in lockstep."""
        r = (rng or _rng).random()
        exp = min(self.cap.total_seconds(),
                  self.base.total_seconds() * 2 ** max(0, min(attempts - 1, 30)))
        return timedelta(seconds=exp * (0.5 + r / 2))

    def next_attempt(self, now: datetime, attempts: int, deadline: datetime) -> datetime | None:
        """When to try again after ``attempts`` failures, or ``None``: the window is over."""
        if now >= deadline:
            return None
        return min(now + self.delay(attempts), deadline)

    def should_disable(self, failing_since: datetime, now: datetime) -> bool:
        return now - failing_since >= self.disable_after


_rng = random.SystemRandom()


# -- records -----------------------------------------------------------------------------------

class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the retry window ended without a 2xx


@dataclass
class Webhook:
    id: str
    tenant_id: str
    url: str
    description: str
    events: list[str]
    enabled: bool
    secret: str  # sealed (encrypted) signing secret
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None
    previous_secret: str | None = None  # sealed; still signs until previous_secret_expires_at
    previous_secret_expires_at: datetime | None = None
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    failing_since: datetime | None = None
    consecutive_failures: int = 0


@dataclass
class Delivery:
    id: str
    webhook_id: str
    tenant_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    deadline: datetime
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    response_status: int | None = None
    latency_ms: int | None = None
    last_error: str | None = None
    lease_until: datetime | None = None  # a worker is sending it until then


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker holds the lease of, with what it needs to send it."""

    delivery_id: str
    webhook_id: str
    tenant_id: str
    event_id: str
    url: str
    payload: str
    attempts: int  # made before this one
    deadline: datetime  # the end of its retry window
    secrets: Sequence[str] = field(default_factory=tuple)  # sealed; current first


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: a status code (any, 2xx is success) or a transport error."""

    status_code: int | None
    latency_ms: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def describe(self) -> str:
        return f"HTTP {self.status_code}" if self.status_code is not None else (
            self.error or "no answer")
