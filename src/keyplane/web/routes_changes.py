"""``GET /v1/changes``: the change stream SDKs follow to drop cached verifications.

The contract (SDKs depend on it):

* With ``Accept: text/event-stream``, server-sent events. First::

      event: position
      data: {"position": <head>}

  then one event per change after ``after`` (or the ``Last-Event-ID`` header)::

      id: <N>
      data: {"position": <N>, "kind": "key", "ref": "<id>"}

  and a ``: keepalive`` comment every ``KEYPLANE_SSE_KEEPALIVE_SECONDS`` (15 s). Without
  ``after`` the stream starts at the head.
* Otherwise a long poll: ``GET /v1/changes?after=N&wait=25`` answers
  ``{"items": [{"position", "kind", "ref"}, …], "position": P}`` as soon as there is a change
  after N, or with no items after ``wait`` seconds; the next call passes ``after=P``. Without
  ``after`` it answers at once with the head and no items.
* Kinds: ``key`` (ref: key id), ``principal`` (member or service account id), ``tenant`` (tenant
  id: policy, group or state change), ``catalogue`` (scope name or ``*``), ``all`` (``*``: drop
  everything), and kinds other features add (``connection``, ``app`` …).
* A position that cannot be caught up exactly (more than ``REPLAY_LIMIT`` changes behind, or
  ahead of the head because the database was replaced) gets one
  ``{"position": <head>, "kind": "all", "ref": "*"}``: drop every cached verification.
* Caller: ``keys:verify``. An operator verifier sees every change. A tenant's verifier sees its
  own tenant's ``key``, ``principal``, ``tenant`` and ``connection`` changes, the ``app``
  changes of apps its tenant registered or has a connection to (a suspended app's tokens are
  dropped by app id), and the generic ``catalogue`` and ``all`` ones, which name nothing of any
  tenant. It never sees another tenant's ids: not other tenants' changes, operator keys'
  changes, apps it has nothing to do with, other kinds, or changes of objects already deleted
  when the change was read (a deleted member's keys are revoked in the same transaction, and
  those ``key`` changes are sent).
* The stream re-checks the caller's credential at every keepalive and ends when it is no
  longer valid; it also ends when the server shuts down. Clients reconnect with
  ``Last-Event-ID`` (browsers' ``EventSource`` does so on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from keyplane.bootstrap import Keyplane
from keyplane.core.changes import RESET, Change
from keyplane.services.changes import Batch, ChangeFeed
from keyplane.web.deps import CallerDep, KeyplaneDep, bearer, new_peer

router = APIRouter(tags=["verify"])

REPLAY_LIMIT = 10_000
BATCH = 500

After = Annotated[int | None, Query(ge=0, description="Resume after this position")]
Wait = Annotated[float, Query(ge=0, le=60, description="Long poll: seconds to wait")]


def _event(change: Change) -> str:
    return f"id: {change.position}\ndata: {json.dumps(change.as_json())}\n\n"


def _out_of_reach(after: int, head: int) -> bool:
    return after > head or head - after > REPLAY_LIMIT


async def _read(feed: ChangeFeed, after: int, tenant_id: str | None) -> Batch:
    batch = feed.read(after, tenant_id, BATCH)
    if batch is None:
        batch = await run_in_threadpool(feed.read_stored, after, tenant_id, BATCH)
    return batch


@router.get(
    "/v1/changes",
    summary="Follow changes (server-sent events, or a long poll) to drop cached verifications",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def changes(request: Request, caller: CallerDep, kp: KeyplaneDep, after: After = None,
                  wait: Wait = 25.0) -> Any:
    caller.require("keys:verify")
    feed = kp.feed
    tenant_id = caller.tenant_id
    if "text/event-stream" in request.headers.get("accept", "").lower():
        if after is None:
            last = request.headers.get("last-event-id", "").strip()
            after = int(last) if last.isdigit() and len(last) < 19 else None
        return StreamingResponse(
            _stream(request, kp, tenant_id, after), media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )
    head = feed.stable_head
    if after is None:
        return {"items": [], "position": head}
    if _out_of_reach(after, head):
        return {"items": [Change(head, RESET, "*").as_json()], "position": head}
    deadline = time.monotonic() + wait
    while True:
        batch = await _read(feed, after, tenant_id)
        after = batch.position
        left = deadline - time.monotonic()
        if batch.items or left <= 0 or feed.closing.is_set():
            return {"items": [c.as_json() for c in batch.items], "position": after}
        await feed.wait(after, left)


async def _stream(request: Request, kp: Keyplane, tenant_id: str | None,
                  after: int | None) -> AsyncIterator[str]:
    feed = kp.feed
    feed.subscribers += 1  # on the event loop: no lock needed
    try:
        async for event in _events(request, kp, tenant_id, after):
            yield event
    finally:
        feed.subscribers -= 1


async def _events(request: Request, kp: Keyplane, tenant_id: str | None,
                  after: int | None) -> AsyncIterator[str]:
    feed = kp.feed
    keepalive = kp.settings.sse_keepalive_seconds
    head = feed.stable_head
    yield f"retry: 1000\nevent: position\ndata: {json.dumps({'position': head})}\n\n"
    position = head if after is None else after
    if _out_of_reach(position, head):
        yield _event(Change(head, RESET, "*"))
        position = head
    next_keepalive = time.monotonic() + keepalive
    while not feed.closing.is_set():
        batch = await _read(feed, position, tenant_id)
        for change in batch.items:
            yield _event(change)
        position = batch.position
        now = time.monotonic()
        if now >= next_keepalive:
            if not await _still_allowed(request, kp):
                return
            yield ": keepalive\n\n"
            next_keepalive = now + keepalive
        await feed.wait(position, next_keepalive - now)


async def _still_allowed(request: Request, kp: Keyplane) -> bool:
    """The stream's credential is still valid and still holds keys:verify (the verification
    service decides, on a new Peer: the opening request's verdict is not reused)."""
    raw, peer, service = bearer(request), new_peer(request), kp.verification
    try:
        allowed = service.still_allowed_if_cached(raw, peer)
        if allowed is None:
            allowed = await run_in_threadpool(service.still_allowed, raw, peer)
    except Exception:  # e.g. the database away past its grace: the stream ends (clients
        return False  # reconnect, and are answered as any request is)
    return allowed


def end_streams_on_signal(feed: ChangeFeed) -> Callable[[], None]:
    """Open streams would keep a graceful shutdown waiting forever: on SIGTERM/SIGINT end them
    (then the server's own handler runs). Returns a function that undoes it. Only in the main
    thread, where the server installed its handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(feed.close_streams)
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.SIG_IGN, None):
            continue  # nobody manages shutdown on this signal here
        previous[sig] = current
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError):
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, old)

    return undo
