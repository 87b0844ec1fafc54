"""A key's version (its ETag) and the rule ``Caller.lacks``: pure, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from keyplane.core.model import ApiKey, RateLimit
from keyplane.core.rights import Caller, CredentialKind

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def _key(**changes: object) -> ApiKey:
    key = ApiKey(id="key_1", tenant_id="loc_1", owner_id="usr_1", name="crm", prefix="kp",
                 start="abcdefgh", scopes=["contacts:read"], created_at=NOW, updated_at=NOW,
                 expires_at=NOW + timedelta(days=90), lifetime_days=90)
    return replace(key, **changes)  # type: ignore[arg-type]


def test_the_version_is_the_same_for_the_same_state_in_any_time_zone() -> None:
    assert _key().version == _key(updated_at=NOW.astimezone(ZoneInfo("Etc/UTC"))).version
    assert _key().version == _key(
        updated_at=NOW.astimezone(timezone(timedelta(hours=2)))).version
    assert _key().version == _key(last_used_at=NOW, remaining=5).version  # usage is not state


def test_every_setting_and_every_rotation_changes_the_version() -> None:
    base = _key().version
    for change in ({"name": "x"}, {"description": "x"}, {"start": "zzzzzzzz"},
                   {"scopes": ["contacts:write"]}, {"allowed_ips": ["10.0.0.0/8"]},
                   {"require_tls": False}, {"enabled": False}, {"meta": {"a": 1}},
                   {"ratelimit": RateLimit(5, 60)}, {"owner_id": "usr_2"},
                   {"expires_at": NOW}, {"updated_at": NOW + timedelta(microseconds=1)}):
        assert _key(**change).version != base, change


def test_lacks_names_the_listed_scopes_beyond_the_caller() -> None:
    caller = Caller(kind=CredentialKind.TENANT_KEY, scopes=frozenset({"contacts:write",
                                                                      "keys:write"}))
    assert caller.lacks(["contacts:read", "contacts:write", "keys:read"]) == []
    assert caller.lacks(["payments:read", "members:write", "contacts:read"]) == [
        "members:write", "payments:read"]
    operator = Caller(kind=CredentialKind.OPERATOR_KEY, scopes=frozenset({"platform:write"}))
    assert operator.lacks(["members:write", "payments:write"]) == []
