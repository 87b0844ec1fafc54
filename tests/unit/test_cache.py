"""The in-process verification cache: bounded, expiring, and invalidated precisely."""

from __future__ import annotations

from keyplane.cache.local import LRU, MISSING, VerificationCache, snapshot_tags
from keyplane.core.policy import Snapshot


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def snap(key: str, owner: str = "usr_a", tenant: str = "loc_a", **meta: object) -> Snapshot:
    return Snapshot(key_id=key, tenant_id=tenant, owner_id=owner, name=key,
                    scopes=frozenset(), expires_at=None, meta=dict(meta))


def test_invalidation_drops_exactly_the_entries_of_that_key_owner_tenant_or_grant() -> None:
    cache = VerificationCache(size=100, ttl=60, timer=Timer())
    cache.put("d1", snap("key_1", "usr_a", "loc_a"), cache.generation, None)
    cache.put("d2", snap("key_1", "usr_a", "loc_a"), cache.generation, None)  # grace: 2 secrets
    cache.put("d3", snap("key_2", "usr_b", "loc_a"), cache.generation, None)
    cache.put("d4", snap("key_3", "usr_c", "loc_b"), cache.generation, None)
    cache.put("d5", snap("con_1", "usr_c", "loc_b", grant_id="con_1", app_id="app_1"),
              cache.generation, None)

    cache.invalidate("key", "key_1")
    assert cache.get("d1") is None and cache.get("d2") is None
    assert cache.get("d3") is not None and cache.get("d4") is not None

    cache.invalidate("principal", "usr_b")
    assert cache.get("d3") is None and cache.get("d4") is not None

    cache.invalidate("connection", "con_1")
    assert cache.get("d5") is None and cache.get("d4") is not None

    cache.invalidate("tenant", "loc_b")
    assert cache.get("d4") is None
    assert len(cache.hits) == 0 and cache.hits._index == {}


def test_unknown_kinds_drop_everything() -> None:
    cache = VerificationCache(size=10, ttl=60, timer=Timer())
    cache.put("d1", snap("key_1"), cache.generation, None)
    cache.invalidate("catalogue", "contacts:read")
    assert cache.get("d1") is None


def test_a_read_that_started_before_an_invalidation_is_not_cached() -> None:
    cache = VerificationCache(size=10, ttl=60, timer=Timer())
    generation = cache.generation
    cache.invalidate("key", "key_1")  # the revocation commits while the DB read is under way
    cache.put("d1", snap("key_1"), generation, None)
    cache.put_missing("d2", generation)
    assert cache.get("d1") is None and cache.get("d2") is None


def test_entries_never_outlive_the_key_and_negative_entries_are_short() -> None:
    timer = Timer()
    cache = VerificationCache(size=10, ttl=60, negative_ttl=5, timer=timer)
    cache.put("d1", snap("key_1"), cache.generation, seconds_left=2.0)
    cache.put_missing("d2", cache.generation)
    assert cache.get("d1") is not None and cache.get("d2") is MISSING
    timer.now += 2.0
    assert cache.get("d1") is None  # expired with the key, not after the 60 s TTL
    timer.now += 3.0
    assert cache.get("d2") is None
    cache.put("d3", snap("key_3"), cache.generation, seconds_left=-1)
    assert cache.get("d3") is None  # already expired: never cached


def test_the_lru_is_bounded_and_its_index_follows_evictions() -> None:
    lru: LRU[Snapshot] = LRU(3, tags=snapshot_tags)
    for i in range(10):
        lru.put(f"d{i}", snap(f"key_{i}", f"usr_{i}"), deadline=10**9)
    assert len(lru) == 3
    assert lru.get("d0", 0) is None and lru.get("d9", 0) is not None
    # only the three live entries are indexed (key, principal, tenant tags)
    indexed = {k for tag in lru._index for k in lru._tagged(tag)}
    assert indexed == {"d7", "d8", "d9"}
    assert lru.drop_tag(("tenant", "loc_a")) == 3 and lru._index == {}


def test_recently_used_entries_survive_eviction() -> None:
    lru: LRU[Snapshot] = LRU(2, tags=snapshot_tags)
    lru.put("a", snap("key_a"), 10**9)
    lru.put("b", snap("key_b"), 10**9)
    assert lru.get("a", 0) is not None  # a is now the most recent
    lru.put("c", snap("key_c"), 10**9)
    assert lru.get("b", 0) is None and lru.get("a", 0) is not None


def test_a_tag_shared_by_several_entries_keeps_each_until_dropped() -> None:
    lru: LRU[Snapshot] = LRU(10, tags=snapshot_tags)
    lru.put(b"s1", snap("key_1", "usr_a"), 10**9)  # a key with two cached secrets (grace)
    lru.put(b"s2", snap("key_1", "usr_a"), 10**9)
    lru.put(b"s3", snap("key_2", "usr_a"), 10**9)
    assert sorted(lru._tagged(("key", "key_1"))) == [b"s1", b"s2"]
    lru.put(b"s2", snap("key_1", "usr_a"), 10**9)  # put again: indexed once
    assert len(lru._tagged(("key", "key_1"))) == 2
    assert lru.drop_tag(("key", "key_2")) == 1
    assert lru.get(b"s1", 0) is not None
    assert lru.drop_tag(("principal", "usr_a")) == 2
    assert len(lru) == 0 and lru._index == {}


def test_a_remembered_answer_never_outlives_what_it_was_computed_from() -> None:
    timer = Timer()
    cache = VerificationCache(size=10, ttl=60, timer=timer)
    cache.put("caller", snap("key_v"), cache.generation, None)
    timer.now += 30
    cache.put("key", snap("key_1"), cache.generation, None)
    assert cache.remember(cache.answers, ("request",), "answer", cache.generation,
                          ["caller", "key"])
    assert cache.remembered(cache.answers, ("request",)) == "answer"
    timer.now += 29.9
    assert cache.remembered(cache.answers, ("request",)) == "answer"
    timer.now += 0.2  # the caller's snapshot, cached 30 s earlier, has expired: so has this
    assert cache.remembered(cache.answers, ("request",)) is None


def test_an_answer_is_not_remembered_across_a_change_or_without_its_snapshots() -> None:
    cache = VerificationCache(size=10, ttl=60, timer=Timer())
    cache.put("key", snap("key_1"), cache.generation, None)
    generation = cache.generation
    cache.invalidate("key", "key_other")  # something changed while the answer was computed
    assert not cache.remember(cache.answers, ("r",), "stale?", generation, ["key"])
    assert not cache.remember(cache.answers, ("r",), "orphan", cache.generation,
                              ["key", "not cached"])
    assert cache.remembered(cache.answers, ("r",)) is None


def test_every_invalidation_forgets_every_answer() -> None:
    cache = VerificationCache(size=10, ttl=60, timer=Timer())
    cache.put("key", snap("key_1", tenant="loc_a"), cache.generation, None)
    cache.put("other", snap("key_2", tenant="loc_b"), cache.generation, None)
    assert cache.remember(cache.answers, ("r1",), "a", cache.generation, ["key"])
    assert cache.remember(cache.answers, ("r2",), "b", cache.generation, ["other"])
    cache.invalidate("tenant", "loc_b")  # an answer may depend on more than it is tagged with
    assert cache.remembered(cache.answers, ("r1",)) is None
    assert cache.remembered(cache.answers, ("r2",)) is None
    assert cache.get("key") is not None  # the snapshots themselves are dropped precisely


def test_the_answer_cache_is_bounded_and_can_be_off() -> None:
    cache = VerificationCache(size=10, ttl=60, timer=Timer(), answer_size=3)
    cache.put("key", snap("key_1"), cache.generation, None)
    for i in range(5):
        assert cache.remember(cache.answers, (i,), i, cache.generation, ["key"])
    assert len(cache.answers) == 3 and cache.remembered(cache.answers, (0,)) is None
    assert cache.remembered(cache.answers, (4,)) == 4
    off = VerificationCache(size=10, ttl=60, timer=Timer(), answer_size=0)
    off.put("key", snap("key_1"), off.generation, None)
    assert not off.remember(off.answers, (1,), 1, off.generation, ["key"])
    assert off.remembered(off.answers, (1,)) is None
