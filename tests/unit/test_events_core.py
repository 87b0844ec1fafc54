"""The pure rules of Keyplane's own events and of automations (core/events.py)."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta

import pytest

from keyplane.core.errors import ValidationError
from keyplane.core.events import (
    EVENT_TYPE_PATTERN,
    EXPIRED,
    RULE_EVENT_PATTERN,
    Automation,
    Source,
    days_left,
    due_threshold,
    network_of,
    product_event_type,
    rule_event,
    threshold_window,
)
from keyplane.core.webhooks import EVENT_TYPES

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("left", "due"), [
    (timedelta(days=30), None), (timedelta(days=14, seconds=1), None),
    (timedelta(days=14), 14), (timedelta(days=8), 14), (timedelta(days=7), 7),
    (timedelta(days=5), 7), (timedelta(days=1, seconds=1), 7), (timedelta(days=1), 1),
    (timedelta(seconds=1), 1), (timedelta(0), EXPIRED),
    (-timedelta(days=7) + timedelta(seconds=1), EXPIRED),
    (-timedelta(days=7), None),
])
def test_the_nearest_reached_reminder_is_due(left: timedelta, due: int | None) -> None:
    assert due_threshold(NOW + left, NOW) == due
    if due is not None:  # the scheduler's query for that threshold finds the key
        after, until = threshold_window(due, NOW)
        assert after < NOW + left <= until


def test_days_left_round_up() -> None:
    assert days_left(NOW + timedelta(days=6, hours=2), NOW) == 7
    assert days_left(NOW + timedelta(days=7), NOW) == 7
    assert days_left(NOW + timedelta(hours=3), NOW) == 1
    assert days_left(NOW - timedelta(hours=3), NOW) == 0


def test_networks_are_slash_24_and_slash_64() -> None:
    assert network_of(ipaddress.ip_address("203.0.113.77")) == "203.0.113.0/24"
    assert network_of(ipaddress.ip_address("2001:db8:1:2:ffff::1")) == "2001:db8:1:2::/64"


@pytest.mark.parametrize("value", ["contact.created", "order.updated", "keys.x", "a1_b.c_2"])
def test_product_event_types(value: str) -> None:
    assert product_event_type(value) == value
    assert re.fullmatch(EVENT_TYPE_PATTERN[1:-1], value)


@pytest.mark.parametrize("value", ["Contact.created", "contact", "contact.", ".created",
                                   "a.b.c", "contact.*", "key.created", "webhook.anything",
                                   "service_account.x", "", 3, None])
def test_bad_or_reserved_product_event_types_are_refused(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        product_event_type(value)
    assert err.value.field == "type"
    if isinstance(value, str):  # the schema's pattern says the same
        assert not re.fullmatch(EVENT_TYPE_PATTERN[1:-1], value)


def test_every_catalogue_area_is_reserved() -> None:
    for event_type in EVENT_TYPES:
        with pytest.raises(ValidationError):
            product_event_type(event_type)


@pytest.mark.parametrize(("pattern", "ok"), [
    ("contact.created", True), ("contact.*", True), ("*.created", True), ("*.*", False),
    ("*", False), ("key.*", False), ("contact", False),
])
def test_rule_events(pattern: str, ok: bool) -> None:
    assert bool(re.fullmatch(RULE_EVENT_PATTERN[1:-1], pattern)) is ok
    if ok:
        assert rule_event(pattern) == pattern
    else:
        with pytest.raises(ValidationError):
            rule_event(pattern)


def test_a_rule_matches_its_event_and_filters() -> None:
    rule = Automation(id="aut_1", tenant_id="loc_a", name="new", event="*.created",
                      webhook_ids=["whk_1"], created_at=NOW, updated_at=NOW,
                      principal_id="mem_1")
    source = Source(tenant_id="loc_a", key_id="key_1", principal_id="mem_1")
    assert rule.matches("contact.created", source)
    assert not rule.matches("contact.updated", source)
    assert not rule.matches("contact.created", Source("loc_a", "key_1", "mem_2"))
    assert not rule.matches("contact.created", Source("loc_b", "key_1", "mem_1"))
    rule.app_id = "app_1"
    assert not rule.matches("contact.created", source)
    assert rule.matches("contact.created", Source("loc_a", "key_1", "mem_1", "app_1"))
    rule.enabled = False
    assert not rule.matches("contact.created", Source("loc_a", "key_1", "mem_1", "app_1"))
