"""What the middleware runs beside the app, and when it starts and stops.

:class:`Runtime` holds what is bound to the event loop: the HTTP client to Keyplane, the
change follower and the usage reporter's timer. It starts on the running loop at lifespan
startup, or at the first request when the server sends no lifespan, and starts again if the
loop changes. :func:`serve_lifespan` passes the ASGI lifespan through to the app, and answers
it itself when the app does not speak lifespan (Django's ASGI handler refuses it), so that the
change stream starts and usage is reported at shutdown either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx2

from keyplane.sdk._cache import VerdictCache
from keyplane.sdk._changes import ChangeFollower, Mode
from keyplane.sdk._usage import UsageReporter
from keyplane.sdk._version import USER_AGENT

__all__ = ["Runtime", "serve_lifespan"]

log = logging.getLogger("keyplane.sdk")


class Runtime:
    """``url``: Keyplane's base URL; ``token``: the verifier credential; ``transport``: an
    httpx2 async transport (tests)."""

    def __init__(self, url: str, token: str, *, cache: VerdictCache, usage: UsageReporter,
                 mode: Mode, timeout: float,
                 transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._token = token
        self.cache = cache
        self.usage = usage
        self.mode: Mode = mode
        self._timeout = timeout
        self._transport = transport
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http: httpx2.AsyncClient | None = None
        self.follower: ChangeFollower | None = None

    def connect(self) -> httpx2.AsyncClient:
        """The HTTP client to Keyplane on the running loop; starts the change follower and
        the usage reporter with it."""
        loop = asyncio.get_running_loop()
        if self.loop is loop and self.http is not None:
            return self.http
        self.loop = loop
        self.http = http = httpx2.AsyncClient(
            base_url=self.url, transport=self._transport, timeout=self._timeout,
            headers={"Authorization": f"Bearer {self._token}", "User-Agent": USER_AGENT},
            limits=httpx2.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.follower = ChangeFollower(http, self.cache, self.mode)
        self.follower.start()
        self.usage.start(http)
        return http

    async def aclose(self) -> None:
        """Stop following changes, report the uses not yet reported and close connections."""
        follower, http = self.follower, self.http
        self.follower, self.http, self.loop = None, None, None
        if follower is not None:
            await follower.stop()
        await self.usage.stop()
        if http is not None:
            await http.aclose()

    async def wait_live(self, timeout: float = 10.0) -> bool:
        """Wait until the change stream is connected (``False`` on timeout)."""
        self.connect()
        if self.follower is None or self.mode == "off":
            return False
        try:
            await asyncio.wait_for(self.follower.connected.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def serve_lifespan(app: Any, runtime: Runtime, scope: Any, receive: Any,
                         send: Any) -> None:
    """Run ``app``'s lifespan with the runtime started at startup and closed at shutdown."""
    seen: set[str] = set()  # lifespan messages received, and those the app sent

    async def receive_wrapper() -> Any:
        message = await receive()
        seen.add(message["type"])
        if message["type"] == "lifespan.startup":
            runtime.connect()
        elif message["type"] == "lifespan.shutdown":
            await runtime.aclose()
        return message

    async def send_wrapper(message: Any) -> None:
        seen.add(message["type"])
        await send(message)

    try:
        await app(scope, receive_wrapper, send_wrapper)
    except Exception:
        if seen & {"lifespan.startup.complete", "lifespan.startup.failed"}:
            raise  # the app speaks lifespan, and failed at it
        # the app does not speak lifespan (Django's ASGI handler refuses it): answer it here
        log.debug("the app does not handle lifespan; KeyplaneMiddleware answers it")
        await _own_lifespan(runtime, receive, send, "lifespan.startup" in seen)


async def _own_lifespan(runtime: Runtime, receive: Any, send: Any, started: bool) -> None:
    while True:
        kind = "lifespan.startup" if started else (await receive())["type"]
        started = False
        if kind == "lifespan.startup":
            runtime.connect()
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await runtime.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
