"""The change feed's ordering rules, over an in-memory change log whose rows can become visible
out of order (as PostgreSQL sequence values do when transactions commit out of order)."""

from __future__ import annotations

import asyncio

from keyplane.core.changes import Change, is_remote_delivery
from keyplane.services.changes import ChangeFeed
from keyplane.services.context import LocalBus


class Log:
    """Committed rows, by position; ``commit`` makes one visible."""

    def __init__(self) -> None:
        self.rows: dict[int, Change] = {}

    def commit(self, position: int, kind: str = "key", ref: str | None = None,
               tenant_id: str | None = "t1") -> None:
        self.rows[position] = Change.logged(position, kind, ref or f"key_{position}", tenant_id)

    def head(self) -> int:
        return max(self.rows, default=0)

    def read(self, after: int, limit: int) -> list[Change]:
        return [self.rows[p] for p in sorted(self.rows) if p > after][:limit]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed_over(log: Log, clock: Clock, **kw: float) -> tuple[ChangeFeed, list[tuple[str, str]]]:
    bus = LocalBus()
    heard: list[tuple[str, str]] = []
    bus.subscribe(lambda kind, ref: heard.append((kind, ref)))
    feed = ChangeFeed(log, bus, period=60, gap_seconds=kw.get("gap", 5.0),
                      buffer_size=int(kw.get("buffer", 100)), timer=clock)
    feed.refresh()  # the first read only learns the head
    return feed, heard


def test_new_rows_are_delivered_once_as_remote_changes() -> None:
    log, clock = Log(), Clock()
    log.commit(1)
    feed, heard = feed_over(log, clock)
    assert feed.stable_head == 1 and heard == []  # history before start is not replayed
    remote: list[bool] = []
    feed.bus.subscribe(lambda *_: remote.append(is_remote_delivery()))
    log.commit(2)
    log.commit(3, "principal", "mem_1")
    assert feed.refresh() == 2
    assert feed.refresh() == 0
    assert heard == [("key", "key_2"), ("principal", "mem_1")]
    assert remote == [True, True]
    assert feed.stable_head == 3


def test_the_stable_head_waits_at_a_gap_until_the_late_row_commits() -> None:
    log, clock = Log(), Clock()
    feed, heard = feed_over(log, clock)
    log.commit(2)  # position 1 is taken by a transaction that has not committed yet
    feed.refresh()
    assert heard == [("key", "key_2")]  # invalidation does not wait
    assert feed.stable_head == 0  # the stream does
    held = feed.read(0, None)
    assert held is not None and held.items == [] and held.position == 0
    clock.now = 1.0
    log.commit(1)
    feed.refresh()
    assert feed.stable_head == 2
    batch = feed.read(0, None)
    assert batch is not None and [c.position for c in batch.items] == [1, 2]
    assert heard == [("key", "key_2"), ("key", "key_1")]


def test_a_gap_that_never_fills_is_passed_after_gap_seconds() -> None:
    log, clock = Log(), Clock()
    feed, _ = feed_over(log, clock, gap=5.0)
    log.commit(3)  # 1 and 2 were rolled back
    feed.refresh()
    clock.now = 4.9
    feed.refresh()
    assert feed.stable_head == 0
    clock.now = 5.0
    feed.refresh()
    assert feed.stable_head == 3
    batch = feed.read(0, None)
    assert batch is not None and [c.position for c in batch.items] == [3]


def test_a_tenant_reads_its_own_and_generic_changes_only() -> None:
    log, clock = Log(), Clock()
    feed, _ = feed_over(log, clock)
    log.commit(1, tenant_id="t1")
    log.commit(2, tenant_id="t2")
    log.commit(3, "catalogue", "*", tenant_id=None)
    log.commit(4, "key", "key_operator", tenant_id=None)  # an operator key
    log.commit(5, "connection", "grant_1", tenant_id=None)  # a kind without a tenant mapping
    feed.refresh()
    t1 = feed.read(0, "t1")
    everything = feed.read(0, None)
    assert t1 is not None and everything is not None
    assert [c.position for c in t1.items] == [1, 3]
    assert t1.position == 5  # what it skipped need not be read again
    assert [c.position for c in everything.items] == [1, 2, 3, 4, 5]


def test_reads_are_paged_and_old_positions_go_to_storage() -> None:
    log, clock = Log(), Clock()
    feed, _ = feed_over(log, clock, buffer=3)
    for p in range(1, 11):
        log.commit(p)
    feed.refresh()
    first = feed.read(7, None, limit=2)  # memory keeps the 3 most recent: 8, 9, 10
    assert first is not None and [c.position for c in first.items] == [8, 9]
    assert first.position == 9
    assert feed.read(6, None) is None  # older positions are read from storage
    stored = feed.read_stored(0, None, limit=4)
    assert [c.position for c in stored.items] == [1, 2, 3, 4] and stored.position == 4
    rest = feed.read_stored(4, "t2")
    assert rest.items == [] and rest.position == 10


def test_waiters_wake_when_the_head_moves_and_when_streams_close() -> None:
    log, clock = Log(), Clock()
    feed, _ = feed_over(log, clock)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(feed.wait(0, 30))
        await asyncio.sleep(0.01)
        log.commit(1)
        await loop.run_in_executor(None, feed.refresh)
        await asyncio.wait_for(waiting, 5)
        waiting = asyncio.create_task(feed.wait(1, 30))
        await asyncio.sleep(0.01)
        await loop.run_in_executor(None, feed.close_streams)
        await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())


class PrunableLog(Log):
    def __init__(self) -> None:
        super().__init__()
        self.prunes: list[int] = []

    def prune(self, keep: int) -> int:
        self.prunes.append(keep)
        doomed = [p for p in self.rows if p <= self.head() - keep]
        for p in doomed:
            del self.rows[p]
        return len(doomed)


def test_the_log_is_pruned_at_most_once_per_period_keeping_more_than_any_replay() -> None:
    log, clock = PrunableLog(), Clock()
    feed, _ = feed_over(log, clock)
    feed._maybe_prune()
    assert log.prunes == []  # not right after start
    clock.now += ChangeFeed.PRUNE_EVERY
    feed._maybe_prune()
    feed._maybe_prune()
    assert log.prunes == [ChangeFeed.KEEP]
    clock.now += ChangeFeed.PRUNE_EVERY
    feed._maybe_prune()
    assert len(log.prunes) == 2
    from keyplane.web.routes_changes import REPLAY_LIMIT

    assert ChangeFeed.KEEP > REPLAY_LIMIT  # a pruned position always gets a reset, never a gap
