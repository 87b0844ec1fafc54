"""Following Keyplane's change stream to drop cached verdicts the moment a key, owner or tenant
changes.

``GET /v1/changes?after=<position>`` with ``Accept: text/event-stream`` answers with server-sent
events: first ``event: position`` (the head), then one ``{"position", "kind", "ref"}`` per change.
Without that header it is a long poll: ``?after=N&wait=25`` → ``{"items": [...], "position": N}``.
The follower resumes from the last position it saw, so nothing is missed across reconnects;
while it is disconnected the cache runs on its short TTL. The server sends a keepalive comment
every 15 s, so a stream silent for ``read_timeout`` (45 s) is taken for dead and reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any, Literal

import httpx2

from keyplane.sdk._cache import VerdictCache

log = logging.getLogger("keyplane.sdk")

Mode = Literal["sse", "poll", "off"]


class _Unsupported(Exception):
    """The server does not offer this mode of the change stream."""


class _Refused(Exception):
    """The server refused the verifier credential (configuration error)."""


class ChangeFollower:
    def __init__(self, http: httpx2.AsyncClient, cache: VerdictCache, mode: Mode = "sse", *,
                 poll_wait: float = 25.0, read_timeout: float = 45.0,
                 min_backoff: float = 0.1, max_backoff: float = 10.0) -> None:
        self.http = http
        self.cache = cache
        self.mode: Mode = mode
        self.poll_wait = poll_wait
        self.read_timeout = read_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.position: int | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.mode != "off" and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="keyplane-changes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self._down()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.min_backoff
        while True:
            try:
                if self.mode == "sse":
                    await self._follow_sse()
                else:
                    await self._follow_poll()
                backoff = self.min_backoff  # a clean end of stream: reconnect soon
            except asyncio.CancelledError:
                raise
            except _Unsupported:
                if self.mode == "sse":
                    log.info("Keyplane offers no event stream of changes; using long polling")
                    self.mode = "poll"
                    continue
                log.warning("Keyplane offers no change stream; cached verdicts live "
                            "%.1fs", self.cache.degraded_ttl)
                backoff = self.max_backoff
            except _Refused as exc:
                log.error("Keyplane refused the change stream: %s", exc)
                backoff = self.max_backoff
            except (httpx2.HTTPError, httpx2.StreamError, ValueError, KeyError,
                    TypeError) as exc:
                log.warning("change stream interrupted (%s); reconnecting", type(exc).__name__)
            self._down()
            await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 (jitter)
            backoff = min(backoff * 2, self.max_backoff)

    def _up(self) -> None:
        if not self.connected.is_set():
            self.connected.set()
            self.cache.set_live(True)

    def _down(self) -> None:
        self.connected.clear()
        self.cache.set_live(False)

    def _check(self, response: httpx2.Response) -> None:
        if response.status_code in (404, 405, 406, 501):
            raise _Unsupported(str(response.status_code))
        if response.status_code in (401, 403):
            raise _Refused(f"HTTP {response.status_code}")
        if response.status_code == 410:  # our position is older than the server keeps
            self.position = None
            self.cache.clear()
        response.raise_for_status()

    def _apply(self, change: Any) -> None:
        position, kind = int(change["position"]), str(change["kind"])
        if kind == "all":  # the server cannot replay exactly from our position: start over
            self.cache.invalidate(kind, "*")
            self.position = position
            return
        if self.position is not None and position <= self.position:
            return  # already seen (a replay overlapping what we had)
        self.cache.invalidate(kind, str(change["ref"]))
        self.position = position

    def _params(self) -> dict[str, Any]:
        return {} if self.position is None else {"after": self.position}

    async def _follow_sse(self) -> None:
        timeout = httpx2.Timeout(10.0, read=self.read_timeout)
        async with self.http.stream(
            "GET", "/v1/changes", params=self._params(), timeout=timeout,
            headers={"Accept": "text/event-stream", "Cache-Control": "no-store"},
        ) as response:
            self._check(response)
            content_type = response.headers.get("content-type", "").partition(";")[0]
            if content_type.strip().lower() != "text/event-stream":
                raise _Unsupported(content_type)
            async for event in httpx2.EventSource(response):
                if not event.data:
                    continue
                data = json.loads(event.data)
                if event.event == "position":
                    if self.position is None:
                        self.position = int(data["position"])
                    self._up()
                else:
                    self._apply(data)
                    self._up()

    async def _follow_poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            params = self._params()
            params["wait"] = 0 if self.position is None else self.poll_wait  # head at once
            started = loop.time()
            response = await self.http.get(
                "/v1/changes", params=params,
                timeout=httpx2.Timeout(10.0, read=self.poll_wait + 15.0),
            )
            self._check(response)
            body = response.json()
            items = body.get("items", [])
            for change in items:
                self._apply(change)
            if self.position is None or int(body["position"]) > self.position:
                self.position = int(body["position"])
            self._up()
            # a server that answers "nothing new" at once (not holding the poll) is not
            # hammered; a held poll returns early only with news
            early = self.poll_wait / 2 - (loop.time() - started)
            held = params["wait"] > 0
            await asyncio.sleep(min(early, 1.0) if held and not items and early > 0 else 0)
