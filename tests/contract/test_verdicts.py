"""The verifier remembers its verdicts for exact repeats of a question (credential, required
scopes, address, TLS): a repeat is answered without re-running the checks, but never once a
change, an expiry or the end of the cached snapshot's life could make it wrong, and its use is
still counted. On SQLite and PostgreSQL, through the real Verifier."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.core.decisions import Code
from keyplane.core.model import PrincipalKind
from keyplane.core.policy import parse_address
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant
from tests.support import SettableClock, typo

READ = frozenset({"contacts:read"})
IP = parse_address("203.0.113.5")


def test_a_repeated_question_gets_the_remembered_verdict_until_something_changes(
        keyplane: Keyplane, tenant: Tenant, clock: SettableClock) -> None:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "zap", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]})
    verify = keyplane.verifier.verify
    first = verify(issued.secret, required=READ, ip=IP, tls=True)
    assert first.valid
    assert verify(issued.secret, required=READ, ip=IP, tls=True) is first  # remembered
    other_ip = verify(issued.secret, required=READ, ip=parse_address("198.51.100.1"), tls=True)
    assert other_ip.valid and other_ip is not first  # another question, another verdict

    keyplane.keys.update(SYSTEM, tenant.id, issued.key.id, {"scopes": ["payments:read"]})
    assert verify(issued.secret, required=READ, ip=IP, tls=True).decision.code is \
        Code.INSUFFICIENT_SCOPE
    keyplane.keys.update(SYSTEM, tenant.id, issued.key.id, {"scopes": ["contacts:read"]})
    assert verify(issued.secret, required=READ, ip=IP, tls=True).valid

    clock.advance(days=91)  # the clock alone moved past the key's expiry
    assert verify(issued.secret, required=READ, ip=IP, tls=True).decision.code is Code.EXPIRED
    clock.advance(days=-91)  # and back: the verdict given after the expiry was not remembered
    assert verify(issued.secret, required=READ, ip=IP, tls=True).valid

    keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {  # the tenant keeps
        "email": "second-admin@example.com", "role": "admin"})           # an admin
    keyplane.principals.update(SYSTEM, tenant.id, tenant.admin_id, {"enabled": False})
    assert verify(issued.secret, required=READ, ip=IP, tls=True).decision.code is Code.DISABLED


def test_remembered_verdicts_are_counted_and_counters_are_never_skipped(
        keyplane: Keyplane, tenant: Tenant) -> None:
    plain = keyplane.keys.create(SYSTEM, tenant.id, {"name": "p", "owner_id": tenant.admin_id})
    limited = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "l", "owner_id": tenant.admin_id,
        "ratelimit": {"limit": 2, "window_seconds": 60}})
    keyplane.usage.stop()  # counts stay in memory, where the test can see them
    for _ in range(5):
        assert keyplane.verifier.verify(plain.secret, tls=True).valid
    assert keyplane.usage.pending() == 5
    codes = [keyplane.verifier.verify(limited.secret, tls=True).decision.code
             for _ in range(3)]
    assert codes == [Code.VALID, Code.VALID, Code.RATE_LIMITED]


def test_only_checksummed_strings_are_remembered_and_never_past_their_snapshot(
        keyplane: Keyplane, tenant: Tenant, clock: SettableClock) -> None:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "p", "owner_id": tenant.admin_id})
    cache = keyplane.verifier.cache
    for guess in ["kp_garbage", typo(tokens.generate("kp")), tokens.generate("kp")]:
        assert not keyplane.verifier.verify(guess).valid
    assert len(cache.verdicts) == 0

    cache.ttl = 0.2  # as in degraded mode: snapshots live briefly, and so do verdicts
    keyplane.verifier.cache.invalidate("all", "*")
    assert keyplane.verifier.verify(issued.secret, tls=True).valid
    assert keyplane.verifier.verify_cached(issued.secret, tls=True) is not None
    # a remembered verdict lives by Keyplane's clock (the hot path reads one clock), a
    # snapshot by the monotonic one: both move here, as they do in production
    time.sleep(0.3)
    clock.advance(seconds=0.3)
    assert keyplane.verifier.verify_cached(issued.secret, tls=True) is None  # a miss again


def test_a_clock_stepping_back_ends_a_remembered_verdict(
        keyplane: Keyplane, tenant: Tenant, clock: SettableClock) -> None:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "p", "owner_id": tenant.admin_id})
    first = keyplane.verifier.verify(issued.secret, tls=True)
    assert keyplane.verifier.verify(issued.secret, tls=True) is first
    clock.advance(seconds=-30)  # remembered verdicts never outlive their snapshot by a step
    again = keyplane.verifier.verify(issued.secret, tls=True)
    assert again.valid and again is not first


def _hourly(keyplane: Keyplane, tenant: Tenant, key_id: str) -> list[tuple[object, str, int]]:
    clock_now = keyplane.ctx.clock.now()
    answer = keyplane.usage_reports.series(SYSTEM, tenant.id, key_id, start=clock_now
                                           - timedelta(hours=5), end=clock_now
                                           + timedelta(hours=1))
    return [(i["hour"], i["outcome"], i["count"]) for i in answer["items"]]


def test_repeats_from_many_threads_are_all_counted_in_their_hour(
        keyplane: Keyplane, tenant: Tenant, clock: SettableClock) -> None:
    """Repeats of a remembered verdict are counted without a lock (usage.py's Tally): none is
    lost between threads, each falls in the hour it happened, last use and scope use too."""
    clock.set(clock.now().replace(minute=59, second=0, microsecond=0))
    issued = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "p", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]})
    keyplane.usage.stop()  # flushed only when the test says so
    verify = keyplane.verifier.verify
    assert verify(issued.secret, required=READ, ip=IP, tls=True).valid  # decided: recorded

    def repeat(n: int) -> None:
        for _ in range(n):
            assert verify(issued.secret, required=READ, ip=IP, tls=True).valid

    threads = [threading.Thread(target=repeat, args=(2_000,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first_hour = clock.now().replace(minute=0)
    clock.advance(minutes=2)  # the next hour: the same remembered verdict, counted there
    repeat(5)
    last = clock.now()
    assert keyplane.usage.flush() == 16_006
    assert _hourly(keyplane, tenant, issued.key.id) == [
        (first_hour, "VALID", 16_001), (first_hour + timedelta(hours=1), "VALID", 5)]
    assert keyplane.keys.get(SYSTEM, tenant.id, issued.key.id).last_used_at == last


def test_an_idle_tally_is_let_go_and_a_later_repeat_still_counts(
        keyplane: Keyplane, tenant: Tenant) -> None:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "p", "owner_id": tenant.admin_id})
    recorder = keyplane.usage
    recorder.stop()
    verify = keyplane.verifier.verify
    first = verify(issued.secret, tls=True)
    for _ in range(3):
        assert verify(issued.secret, tls=True) is first  # repeats of one remembered verdict
    assert recorder.flush() == 4
    assert recorder.flush() == 0  # idle: closed
    assert recorder.flush() == 0  # idle again: let go, nothing held for it
    assert not recorder._tallies
    for _ in range(2):
        assert verify(issued.secret, tls=True) is first  # still remembered: counted again
    assert recorder.pending() == 2
    assert recorder.flush() == 2
