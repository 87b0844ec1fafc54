"""The one failed-attempt policy (services/throttle.py) as a user meets it at sign-in: an IPv6
/64 is one address, Redis going away never opens the door to guessing, the refusal is audited
once per window with what an operator needs, and workers share the counts through Redis."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.core.model import AuditEvent
from keyplane.core.rights import SYSTEM
from keyplane.services.throttle import client_key
from tests.conftest import auth, make_tenant, serving
from tests.support import REDIS_URL, free_port

WRONG = "not the password at all"
LIMITS: dict[str, Any] = {"trusted_proxies": ["127.0.0.1/32"],
                          "signin_limit_per_account": "3/15 minutes",
                          "signin_limit_per_ip": "4/15 minutes"}


def sign_in_from(http: httpx2.Client, address: str, email: str, password: str) -> int:
    """Sign in through the form as a browser at ``address`` would; the answer's status."""
    http.cookies.clear()
    headers = {"X-Forwarded-For": address}
    page = http.get("/signin", headers=headers)
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    r = http.post("/signin", headers=headers, data={"email": email, "password": password,
                                                    "csrf_token": token.group(1)})
    return r.status_code


def refusals(kp: Keyplane) -> list[AuditEvent]:
    return list(kp.audit.list(SYSTEM, None, action="excess_rate_limit_exceeded", limit=50,
                              cursor=None).items)


@pytest.fixture
def served(database: tuple[str, str | None],
           tmp_path: Path) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    with serving(*database, tmp_path, **LIMITS) as pair:
        yield pair


def test_an_ipv6_64_is_one_address_for_failed_signins(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    tenant = make_tenant(kp)
    # four guesses at four accounts, each from another address of one /64
    for i in range(1, 5):
        assert sign_in_from(http, f"2001:db8:1:2::{i}", f"nobody{i}@example.com", WRONG) == 401
    # a fifth address of that /64 is refused, even with the right password …
    assert sign_in_from(http, "2001:db8:1:2:ffff::9", tenant.admin_email,
                        tenant.admin_password) == 429
    # … while the next /64 signs in
    assert sign_in_from(http, "2001:db8:1:3::1", tenant.admin_email,
                        tenant.admin_password) == 303


def test_the_refusal_is_audited_once_per_window_with_who_and_which_limit(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    for i in range(4):
        assert sign_in_from(http, "2001:db8:9:9::1", f"x{i}@example.com", WRONG) == 401
    for _ in range(2):  # refused twice: one entry
        assert sign_in_from(http, "2001:db8:9:9::2", "y@example.com", WRONG) == 429
    events = refusals(kp)
    assert len(events) == 1
    event = events[0]
    assert (event.tenant_id, event.target, event.outcome) == (None, "2001:db8:9:9::/64",
                                                             "denied")
    assert event.ip == "2001:db8:9:9::2" and event.request_id
    wait = event.details.pop("retry_after")
    assert 0 < wait <= 900
    assert event.details == {"scope": "signin", "counted_per": "address", "limit": 4,
                             "window_seconds": 900}
    assert WRONG not in str(event)


def test_the_account_limit_is_audited_against_the_account(
        served: tuple[Keyplane, httpx2.Client]) -> None:
    kp, http = served
    tenant = make_tenant(kp)
    for i in range(3):  # three addresses, one account
        assert sign_in_from(http, f"198.51.100.{i + 1}", tenant.admin_email, WRONG) == 401
    assert sign_in_from(http, "203.0.113.7", tenant.admin_email, tenant.admin_password) == 429
    [event] = refusals(kp)
    assert event.target == tenant.admin_email and event.ip == "203.0.113.7"
    assert event.details["counted_per"] == "account" and event.details["limit"] == 3


def test_with_redis_unreachable_guessing_is_still_slowed_and_nobody_else_is_locked_out(
        database: tuple[str, str | None], tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    with serving(*database, tmp_path, redis_url=closed, redis_timeout_seconds=0.2,
                 **LIMITS) as (kp, http):
        tenant = make_tenant(kp)
        other = make_tenant(kp, "Beta", email="beta@example.com")
        for _ in range(3):
            assert sign_in_from(http, "198.51.100.20", tenant.admin_email, WRONG) == 401
        # the store is away: counted in this worker's memory, never failing open
        assert sign_in_from(http, "198.51.100.20", tenant.admin_email,
                            tenant.admin_password) == 429
        assert sign_in_from(http, "203.0.113.20", other.admin_email,
                            other.admin_password) == 303
        assert http.get("/readyz").json()["ratelimit"] == "memory"
        assert len(refusals(kp)) == 1


@pytest.mark.redis
def test_two_workers_share_the_counts_and_the_one_audit_entry_through_redis(
        database: tuple[str, str | None], tmp_path: Path) -> None:
    shared = {"redis_url": REDIS_URL, "redis_prefix": "t" + secrets.token_hex(6), **LIMITS}
    with serving(*database, tmp_path, **shared) as (kp, one), \
            serving(*database, tmp_path, **shared) as (_, two):
        tenant = make_tenant(kp)
        for i, http in enumerate((one, two, one, two)):
            assert sign_in_from(http, f"2001:db8:5:5::{i}", f"z{i}@example.com", WRONG) == 401
        for http in (one, two):
            assert sign_in_from(http, "2001:db8:5:5::ff", tenant.admin_email,
                                tenant.admin_password) == 429
        assert len(refusals(kp)) == 1  # the once-per-window mark is shared too
        assert sign_in_from(two, "2001:db8:5:6::1", tenant.admin_email,
                            tenant.admin_password) == 303


def test_guessed_keys_at_the_api_are_audited_by_the_same_policy(
        database: tuple[str, str | None], tmp_path: Path) -> None:
    with serving(*database, tmp_path, failure_limit=2, failure_window_seconds=120,
                 trusted_proxies=["127.0.0.1/32"]) as (kp, http):
        statuses = [http.get("/v1/keys", headers={"X-Forwarded-For": f"2001:db8:7:7::{i}",
                                                  **auth(tokens.generate("kp"))}).status_code
                    for i in range(4)]
        assert statuses == [401, 401, 429, 429]
        [event] = refusals(kp)
        assert (event.target, event.tenant_id, event.ip) == ("2001:db8:7:7::/64", None,
                                                             "2001:db8:7:7::2")
        event.details.pop("retry_after")
        assert event.details == {"scope": "auth", "counted_per": "address", "limit": 2,
                                 "window_seconds": 120}


@pytest.mark.parametrize(("address", "counted_as"), [
    ("203.0.113.9", "203.0.113.9"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.9", "203.0.113.9"),  # an IPv4-mapped address is its IPv4 address
    (" 2001:DB8::1 ", "2001:db8::/64"),
    ("not an address", "not an address"),
])
def test_what_an_address_is_counted_as(address: str, counted_as: str) -> None:
    assert client_key(address) == counted_as
