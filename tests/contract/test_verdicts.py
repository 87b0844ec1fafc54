"""The verifier remembers its verdicts for exact repeats of a question (credential, required
scopes, address, TLS): a repeat is answered without re-running the checks, but never once a
change, an expiry or the end of the cached snapshot's life could make it wrong, and its use is
still counted. On SQLite and PostgreSQL, through the real Verifier."""

from __future__ import annotations

import time

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
        keyplane: Keyplane, tenant: Tenant) -> None:
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "p", "owner_id": tenant.admin_id})
    cache = keyplane.verifier.cache
    for guess in ["kp_garbage", typo(tokens.generate("kp")), tokens.generate("kp")]:
        assert not keyplane.verifier.verify(guess).valid
    assert len(cache.verdicts) == 0

    cache.ttl = 0.2  # as in degraded mode: snapshots live briefly, and so do verdicts
    keyplane.verifier.cache.invalidate("all", "*")
    assert keyplane.verifier.verify(issued.secret, tls=True).valid
    assert keyplane.verifier.verify_cached(issued.secret, tls=True) is not None
    time.sleep(0.3)
    assert keyplane.verifier.verify_cached(issued.secret, tls=True) is None  # a miss again
