"""The database-outage clock (core/outage.py): cached answers for the grace, then none; the
first success ends the outage and tells the caches once."""

from __future__ import annotations

from keyplane.core.outage import DatabaseHealth
from tests.support import SettableClock


def test_cached_answers_are_trusted_for_the_grace_only() -> None:
    clock = SettableClock()
    health = DatabaseHealth(clock, 30)
    assert health.cache_trusted() and not health.down
    health.unreachable()
    start = clock.now()
    clock.advance(seconds=29.9)
    health.unreachable()  # later failures do not move the start
    assert health.down_since == start
    assert health.cache_trusted()
    clock.advance(seconds=0.1)
    assert not health.cache_trusted()
    assert health.seconds_down() == 30


def test_recovery_ends_the_outage_and_calls_back_once() -> None:
    clock = SettableClock()
    health = DatabaseHealth(clock, 30)
    lost: list[int] = []
    recovered: list[int] = []
    health.on_lost.append(lambda: lost.append(1))
    health.on_recovered.append(lambda: recovered.append(1))
    health.reachable()  # nothing was lost: nothing to tell
    assert recovered == []
    health.unreachable()
    health.unreachable()
    clock.advance(seconds=60)
    assert not health.cache_trusted()
    health.reachable()
    health.reachable()
    assert (lost, recovered) == ([1], [1])
    assert health.cache_trusted() and not health.down
    assert health.outages == 1


def test_a_grace_of_zero_trusts_nothing_once_the_database_is_gone() -> None:
    health = DatabaseHealth(SettableClock(), 0)
    assert health.cache_trusted()
    health.unreachable()
    assert not health.cache_trusted()
