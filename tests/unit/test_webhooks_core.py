"""The pure webhook rules: subscriptions, URL and address checks, the retry schedule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyplane.config import Settings
from keyplane.core.errors import ValidationError
from keyplane.core.tokens import Pepper
from keyplane.core.webhooks import (
    EVENT_TYPES,
    RetryPolicy,
    check_url,
    event_patterns,
    refused_address,
    subscribed,
)
from keyplane.sealing import PepperSealer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_patterns_match_types_areas_and_everything() -> None:
    assert subscribed(["key.*"], "key.rotated")
    assert not subscribed(["key.*"], "member.created")
    assert subscribed(["*"], "webhook.disabled")
    assert subscribed(["member.created", "key.revoked"], "key.revoked")
    assert not subscribed(["key.revoked"], "key.rotated")
    assert event_patterns(["key.*", "key.*", "webhook.disabled"]) == ["key.*", "webhook.disabled"]
    for bad in ([], "key.*", ["key"], ["nope.*"], ["key.created.*"], [1], ["*" * 3]):
        with pytest.raises(ValidationError):
            event_patterns(bad)
    assert {"key.created", "key.revoked", "webhook.disabled"} <= EVENT_TYPES


def test_urls_are_https_without_credentials_unless_private_targets_are_allowed() -> None:
    assert check_url("https://hooks.example.com/x", allow_private=False).port == 443
    assert check_url("http://127.0.0.1:9000/x", allow_private=True).port == 9000
    for bad in ("http://hooks.example.com/", "https://a:b@hooks.example.com/",
                "https://hooks.example.com/#frag", "javascript:alert(1)", "https://", "",
                "https://h.example.com/" + "x" * 3000, "https://h\n.example.com/"):
        with pytest.raises(ValidationError) as caught:
            check_url(bad, allow_private=False)
        assert caught.value.field == "url"
    with pytest.raises(ValidationError):
        check_url("https://u@h.example.com/", allow_private=True)


@pytest.mark.parametrize(("address", "refused"), [
    ("93.184.216.34", False), ("2606:2800:220:1::1", False),
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", True), ("172.16.5.4", True), ("192.168.1.1", True), ("fd00::1", True),
    ("169.254.169.254", True), ("fe80::1%eth0", True), ("0.0.0.0", True), ("::", True),
    ("100.64.0.1", True), ("224.0.0.1", True), ("255.255.255.255", True),
])
def test_only_public_addresses_are_reachable(address: str, refused: bool) -> None:
    assert (refused_address(address) is not None) is refused


def test_backoff_grows_with_jitter_and_stays_in_the_window() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    delays = [policy.delay(n, rng).total_seconds() for n in range(1, 20)]
    assert 2.5 <= delays[0] <= 5
    assert 5 <= delays[1] <= 10
    assert all(d <= 3600 for d in delays) and max(delays) > 1800
    assert len({policy.delay(3).total_seconds() for _ in range(20)}) > 1  # jittered
    deadline = T0 + timedelta(hours=24)
    at = T0
    attempts = 0
    while True:
        attempts += 1
        nxt = policy.next_attempt(at, attempts, deadline)
        if nxt is None:
            break
        assert at < nxt <= deadline
        at = nxt
    assert at == deadline and 20 <= attempts <= 60  # tried all day, last at the deadline
    assert policy.should_disable(T0, T0 + timedelta(hours=24))
    assert not policy.should_disable(T0, T0 + timedelta(hours=23))


def test_sealed_secrets_open_only_with_their_pepper_and_their_record() -> None:
    old = Pepper("p1", b"a" * 32)
    new = Pepper("p2", b"b" * 32)
    sealed = PepperSealer([old]).seal("whsec_abc", "whk_1")
    assert "whsec_abc" not in sealed and sealed.startswith("p1:")
    assert PepperSealer([new, old]).unseal(sealed, "whk_1") == "whsec_abc"  # after rotation
    assert PepperSealer([new, old]).seal("x", "whk_1").startswith("p2:")
    with pytest.raises(ValueError):
        PepperSealer([new]).unseal(sealed, "whk_1")  # its pepper is gone
    with pytest.raises(Exception):
        PepperSealer([old]).unseal(sealed, "whk_2")


def test_a_lease_shorter_than_an_attempt_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_LEASE_SECONDS"):
        Settings(data_dir=tmp_path, webhook_timeout_seconds=30)  # default lease: 60 s
    ok = Settings(data_dir=tmp_path, webhook_timeout_seconds=30, webhook_lease_seconds=90)
    assert ok.webhook_retry_window_seconds == 86400  # retried for a day by default
