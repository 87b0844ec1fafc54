"""The key hygiene rules (core/hygiene.py): each reason appears exactly when it should, and the
unused-key policy warns before it revokes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyplane.core import hygiene as hy
from keyplane.core.errors import ValidationError
from keyplane.core.model import ApiKey

T0 = datetime(2026, 1, 1, tzinfo=UTC)
R = hy.Reason


def key(*, scopes: list[str] | None = None, last_used: datetime | None = None,
        expires: datetime | None = T0 + timedelta(days=365), owner: str | None = "prn_1",
        created: datetime = T0) -> ApiKey:
    return ApiKey(id="key_1", tenant_id="loc_1", owner_id=owner, name="k", prefix="kp",
                  start="abcd", scopes=scopes or ["contacts:read"], created_at=created,
                  updated_at=created, expires_at=expires, lifetime_days=365,
                  last_used_at=last_used)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def reasons(k: ApiKey, days: float, **kw: object) -> list[R]:
    return hy.reasons(k, at(days), hy.Thresholds(unused_days=90, expiring_days=14), **kw)  # type: ignore[arg-type]


def test_a_new_key_needs_no_attention() -> None:
    assert reasons(key(), 0) == []
    assert reasons(key(), 6.9) == []


def test_never_used_after_the_grace_and_unused_from_creation() -> None:
    k = key()
    assert reasons(k, 7) == [R.NEVER_USED]
    assert reasons(k, 89.9) == [R.NEVER_USED]
    assert reasons(k, 90) == [R.NEVER_USED, R.UNUSED]


def test_unused_counts_from_the_last_use() -> None:
    k = key(last_used=at(10))
    assert reasons(k, 99.9) == []
    assert reasons(k, 100) == [R.UNUSED]


def test_expiry_reasons() -> None:
    assert reasons(key(expires=None, last_used=at(1)), 2) == [R.NO_EXPIRY]
    k = key(expires=at(30), last_used=at(1))
    assert reasons(k, 15.9) == []
    assert reasons(k, 16) == [R.EXPIRING]
    assert reasons(k, 29.9) == [R.EXPIRING]
    assert reasons(k, 30) == [R.EXPIRED]


def test_owner_disabled_only_for_a_key_with_an_owner() -> None:
    assert reasons(key(last_used=at(1)), 2, owner_enabled=False) == [R.OWNER_DISABLED]
    assert reasons(key(last_used=at(1), owner=None), 2, owner_enabled=False) == []


def test_write_scopes_unused_only_with_write_scopes() -> None:
    writer = key(scopes=["contacts:write", "keys:verify"], last_used=at(1))
    assert reasons(writer, 90) == []
    assert reasons(writer, 91) == [R.UNUSED, R.WRITE_SCOPES_UNUSED]
    reader = key(scopes=["contacts:read", "keys:verify"], last_used=at(1))
    assert reasons(reader, 91) == [R.UNUSED]
    assert hy.writes(["contacts:read", "contacts:write", "keys:verify", "payments:refund"]) \
        == ["contacts:write", "payments:refund"]


@pytest.mark.parametrize("bad", [0, -1, 3651, True, 1.5])
def test_thresholds_are_bounded(bad: object) -> None:
    with pytest.raises(ValidationError) as e:
        hy.Thresholds(unused_days=bad)  # type: ignore[arg-type]
    assert e.value.field == "unused_days"


def test_the_policy_warns_then_revokes() -> None:
    k = key()
    step = hy.unused_step
    assert hy.warn_lead(30) == timedelta(days=7)
    assert step(k, at(22.9), 30, None) is hy.Step.NONE
    assert step(k, at(23), 30, None) is hy.Step.WARN
    assert step(k, at(23), 30, at(23)) is hy.Step.NONE  # warned once
    assert step(k, at(29.9), 30, at(23)) is hy.Step.NONE
    assert step(k, at(30), 30, at(23)) is hy.Step.REVOKE


def test_the_policy_never_revokes_without_a_warning_long_enough_before() -> None:
    k = key()  # turned on long after the key went idle
    assert hy.unused_step(k, at(400), 30, None) is hy.Step.WARN
    assert hy.unused_step(k, at(406.9), 30, at(400)) is hy.Step.NONE
    assert hy.unused_step(k, at(407), 30, at(400)) is hy.Step.REVOKE


def test_a_use_after_the_warning_cancels_it() -> None:
    used = key(last_used=at(25))  # warned at 23, used at 25
    assert hy.unused_step(used, at(30), 30, at(23)) is hy.Step.NONE
    assert hy.unused_step(used, at(48), 30, at(23)) is hy.Step.WARN  # idle again: warn again


def test_a_short_policy_warns_at_half_time() -> None:
    assert hy.warn_lead(7) == timedelta(days=3)
    k = key()
    assert hy.unused_step(k, at(3.9), 7, None) is hy.Step.NONE
    assert hy.unused_step(k, at(4), 7, None) is hy.Step.WARN
    assert hy.unused_step(k, at(7), 7, at(4)) is hy.Step.REVOKE


def test_a_revoked_key_is_left_alone() -> None:
    k = key()
    k.revoked_at = at(1)
    assert hy.unused_step(k, at(400), 30, None) is hy.Step.NONE
