"""Cross-process invalidation: Redis pub/sub when ``KEYPLANE_REDIS_URL`` is set, polling of the
durable change log always.

Bounds (from a committed change to every worker's cache dropping the entry):

* **Redis**: the publishing worker sends each change on ``<prefix>:changes`` after commit; every
  worker's subscriber thread feeds it into its in-process bus. Milliseconds. The change-log
  poller still runs every ``KEYPLANE_CHANGE_POLL_REDIS_SECONDS`` (5 s) as a safety net for a
  publish that could not reach Redis.
* **No Redis, PostgreSQL**: each change's ``NOTIFY`` (sent in its transaction, delivered at
  commit: storage/sql/notify.py) names the change: every worker drops its entries at once and
  wakes its change-log reader (for the change stream). Milliseconds. The poll
  runs every ``KEYPLANE_CHANGE_POLL_REDIS_SECONDS`` as the safety net. Losing the listening
  connection degrades as losing Redis does (below: short lifetime, fast poll, reconnecting),
  except that the worker reads the log at once instead of dropping its whole cache (see
  ``Propagation._listener_down``: the connection usually dies with the database, whose outage
  grace a dropped cache would end).
* **No Redis, SQLite** (or ``KEYPLANE_CHANGE_NOTIFY=false``): every worker polls the change log
  every ``KEYPLANE_CHANGE_POLL_SECONDS`` (0.5 s): that period (plus one query) is the bound.
* **Redis lost**: Redis going away never opens the gate. The subscriber logs it, drops the
  whole local cache, shortens the cache lifetime to ``KEYPLANE_DEGRADED_CACHE_TTL_SECONDS``
  (1 s) and switches the poller to the fast period, reconnecting with backoff. Once subscribed
  again it reads the log once more (anything published while it was away), then restores the
  normal lifetime and the slow poll.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from keyplane.cache.local import VerificationCache
from keyplane.core.changes import RESET, heard, is_remote_delivery, remote_delivery
from keyplane.core.ports import ChangeBus, ChangePoller

log = logging.getLogger("keyplane.invalidation")

_QUEUE_SIZE = 10_000


def redis_client(url: str, timeout: float, **options: Any) -> redis.Redis:
    """A client whose failures surface at once (no silent retries that would hide a lost
    subscription)."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), **options,
    )


class RedisBus:
    """Publishes this process's changes on Redis and feeds other processes' changes into the
    local bus. Messages carry a per-process id so a process skips its own."""

    PING_SECONDS = 1.0
    SILENCE_SECONDS = 3.0  # no message and no pong for this long: the connection is dead
    MAX_BACKOFF = 5.0

    def __init__(self, url: str, bus: ChangeBus, *, channel: str, timeout: float = 0.5,
                 on_down: Any = None, on_up: Any = None,
                 lag_observer: Callable[[str, float], None] | None = None) -> None:
        self.url = url
        self.bus = bus
        self.channel = channel
        self.timeout = timeout
        self.origin = uuid.uuid4().hex
        self.on_down = on_down or (lambda: None)
        self.on_up = on_up or (lambda: None)
        self.connected = threading.Event()
        self.received = 0
        # called with ("redis", seconds) for each change heard from another process
        self.lag_observer = lag_observer
        self._outbox: queue.Queue[tuple[str, str, float] | None] = queue.Queue(_QUEUE_SIZE)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._publish_failures = 0
        self._direct: redis.Redis | None = None
        self._direct_lock = threading.Lock()
        bus.subscribe(self._on_local)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for target, name in ((self._subscribe_loop, "keyplane-redis-sub"),
                             (self._publish_loop, "keyplane-redis-pub")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    # -- publishing --------------------------------------------------------------------------

    def _on_local(self, kind: str, ref: str) -> None:
        if is_remote_delivery():
            return  # it came from another process: it is not ours to send
        if not self._threads:  # not serving (e.g. a CLI command): send it now
            with self._direct_lock:
                if self._direct is None:
                    self._direct = self._publisher()
                self._publish(self._direct, kind, ref)
            return
        try:
            self._outbox.put_nowait((kind, ref, time.time()))
        except queue.Full:
            log.warning("Redis publish queue full; dropping an invalidation (the change-log "
                        "poller still delivers it)")

    def _publisher(self) -> redis.Redis:
        # one retry: after Redis restarts, the pooled connection is dead until reconnected
        return redis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
        )

    def _publish(self, client: redis.Redis, kind: str, ref: str,
                 at: float | None = None) -> None:
        # "t": when the change was handed over after its commit (the invalidation lag's start)
        message = json.dumps({"o": self.origin, "k": kind, "r": ref,
                              "t": time.time() if at is None else at})
        try:
            client.publish(self.channel, message)
        except redis.RedisError as exc:
            self._publish_failures += 1
            if self._publish_failures == 1 or self._publish_failures % 100 == 0:
                log.warning("publishing an invalidation on Redis failed (%d so far; the "
                            "change-log poller delivers it instead): %s",
                            self._publish_failures, type(exc).__name__)
        else:
            if self._publish_failures:
                log.info("publishing invalidations on Redis works again")
            self._publish_failures = 0

    def _publish_loop(self) -> None:
        client = self._publisher()
        try:
            while True:
                item = self._outbox.get()
                if item is None:  # stop() queues it last: what came before is still sent
                    return
                self._publish(client, *item)
        finally:
            client.close()

    # -- subscribing -------------------------------------------------------------------------

    def _subscribe_loop(self) -> None:
        backoff = 0.1
        down_logged = False
        while not self._stop.is_set():
            client = redis_client(self.url, self.timeout)
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self._await_subscription(pubsub)
                log.info("subscribed to Redis channel %s", self.channel)
                self.connected.set()
                down_logged = False
                backoff = 0.1
                self.on_up()
                self._listen(pubsub)
            except Exception as exc:  # Redis errors, or the log unreadable in on_up
                was_connected = self.connected.is_set()
                self.connected.clear()
                if was_connected or not down_logged:
                    log.warning("Redis subscription lost (%s); dropping the local cache and "
                                "polling the change log until Redis is back",
                                type(exc).__name__)
                    down_logged = True
                    self.on_down()
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:  # noqa: S110 - closing a dead connection
                    pass
            if self._stop.wait(backoff * (0.5 + random.random())):  # noqa: S311 - jitter
                break
            backoff = min(backoff * 2, self.MAX_BACKOFF)
        self.connected.clear()

    def _await_subscription(self, pubsub: Any) -> None:
        deadline = time.monotonic() + max(self.timeout * 4, 1.0)
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=self.timeout)
            if message and message.get("type") == "subscribe":
                return
        raise redis.TimeoutError("no subscription confirmation")

    def _listen(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        last_ping = last_heard
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.25)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                if message.get("type") == "message":
                    self._deliver(message.get("data"))
                continue
            if now - last_heard > self.SILENCE_SECONDS:
                raise redis.TimeoutError("Redis stopped answering")
            if now - last_ping >= self.PING_SECONDS:
                pubsub.ping()
                last_ping = now

    def _deliver(self, data: Any) -> None:
        try:
            payload = json.loads(data)
            origin, kind, ref = payload["o"], payload["k"], payload["r"]
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed message on %s", self.channel)
            return
        if origin == self.origin or not isinstance(kind, str) or not isinstance(ref, str):
            return
        self.received += 1
        with remote_delivery():
            self.bus.publish(*heard(kind, ref))
        sent, observer = payload.get("t"), self.lag_observer
        if observer is not None and isinstance(sent, int | float):
            observer("redis", time.time() - sent)


class Listener(Protocol):
    """A carrier of committed changes other than Redis (PostgreSQL ``LISTEN``)."""

    connected: threading.Event

    def start(self) -> None: ...
    def stop(self) -> None: ...


class ListenerFactory(Protocol):
    def __call__(self, *, on_change: Callable[[int, str | None, str | None], None],
                 on_down: Callable[[], None], on_up: Callable[[], None]) -> Listener: ...


class Propagation:
    """Keeps this process's caches in step with every other process: the change-log poller
    always, Redis pub/sub when configured (else the database's own notifications when it has
    them), and the switch to fast polling when that carrier fails."""

    def __init__(self, bus: ChangeBus, cache: VerificationCache, feed: ChangePoller, *,
                 redis_url: str | None, channel: str, redis_timeout: float,
                 poll_seconds: float, poll_redis_seconds: float,
                 degraded_ttl: float, listener: ListenerFactory | None = None,
                 lag_observer: Callable[[str, float], None] | None = None) -> None:
        """``lag_observer``: called with ("redis", seconds) for each change heard on Redis."""
        self.bus = bus
        self.cache = cache
        self.feed = feed
        self.poll_seconds = poll_seconds
        self.poll_redis_seconds = poll_redis_seconds
        self.degraded_ttl = degraded_ttl
        self.normal_ttl = cache.ttl
        self.degraded = False
        self._lock = threading.Lock()
        self.redis: RedisBus | None = None
        self.listener: Listener | None = None
        if redis_url:
            self.redis = RedisBus(redis_url, bus, channel=channel, timeout=redis_timeout,
                                  on_down=self._redis_down, on_up=self._carrier_up,
                                  lag_observer=lag_observer)
        elif listener is not None:
            self.listener = listener(on_change=self._heard, on_down=self._listener_down,
                                     on_up=self._carrier_up)
        self._carrier = "redis" if self.redis is not None else "notify"

    @property
    def mode(self) -> str:
        if self.redis is None and self.listener is None:
            return "polling"
        return "degraded" if self.degraded else self._carrier

    def start(self) -> None:
        carrier = self.redis or self.listener
        if carrier is not None:
            self._degrade()  # until the first subscription is confirmed
        self.feed.period = self.poll_seconds
        self.feed.start()
        if carrier is not None:
            carrier.start()

    def stop(self) -> None:
        carrier = self.redis or self.listener
        if carrier is not None:
            carrier.stop()
        self.feed.stop()

    def _heard(self, position: int, kind: str | None, ref: str | None) -> None:
        """A change committed by any process (this one too): drop its entries now, as a Redis
        message does (even a change the feed has passed over: one that committed long after a
        later position), and let the feed read the log (in order, for the change stream)."""
        if kind is not None and ref is not None:
            with remote_delivery():
                self.bus.publish(*heard(kind, ref))
        if position > self.feed.stable_head:  # else the feed has read it already
            self.feed.wake()

    def _degrade(self) -> None:
        with self._lock:
            self.degraded = True
            self.cache.ttl = self.degraded_ttl
            self.feed.period = self.poll_seconds
        with remote_delivery():
            self.bus.publish(RESET, "*")  # every entry may have missed an invalidation

    def _redis_down(self) -> None:
        self._degrade()

    def _listener_down(self) -> None:
        """The database's notifications stopped: short cache lifetimes and the fast poll, as
        when Redis is lost, but a read of the log instead of dropping the whole cache. The read
        invalidates every change committed so far (any notification lost with the connection
        included), which is all that dropping the cache would achieve; and when the read fails
        the database itself is down, nothing can commit meanwhile, and dropping the cache would
        end the outage grace (core/outage.py) the moment it begins."""
        with self._lock:
            self.degraded = True
            self.cache.ttl = self.degraded_ttl
            self.feed.period = self.poll_seconds
        if self.feed.started:
            with contextlib.suppress(Exception):  # the feed's own poll logs read failures
                self.feed.refresh()

    def _carrier_up(self) -> None:
        # anything published while we were away is in the log: read it before trusting Redis
        # (if that read fails, the subscriber treats it as a failed connection and retries)
        if self.feed.started:
            self.feed.refresh()
        with self._lock:
            self.degraded = False
            self.cache.ttl = self.normal_ttl
            self.feed.period = self.poll_redis_seconds
        log.info("%s invalidation restored", "Redis" if self.redis is not None else "NOTIFY")
