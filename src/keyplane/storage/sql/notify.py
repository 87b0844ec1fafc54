"""PostgreSQL ``LISTEN``/``NOTIFY`` for the change log: each committed change reaches every
worker on every host in milliseconds, without Redis.

**Sending.** The row written to the ``changes`` log and its notification are one statement in the
use case's own transaction (:func:`append_and_notify`): PostgreSQL queues the notification and
delivers it when, and only if, the transaction commits. Nothing is sent after commit, so a process
that dies right after committing has still announced its change, a rolled-back change is never
announced, and a CLI command announces its changes like a worker does. (A publish after commit,
as Redis does, would be lost with a process that dies between the two.) The cost: PostgreSQL
serialises the commits of transactions that notify (a short lock on its notification queue); only
transactions that record a change do, and they are management calls, not verifications.

**Payload.** ``{"p": position, "s": schema, "k": kind, "r": ref}``: under 250 bytes (the log's
columns bound kind and ref to 20 and 40 characters, a schema name to 63 bytes; the limit is 8000).
A listener drops the cached entries for ``kind``/``ref`` at once, as a Redis message does, and
wakes the change feed, which reads the log from its own position and so delivers every change in
order, with its tenant, to the change stream (and a second, harmless invalidation). Acting on the
payload rather than on a read of the log takes the read (and one more thread hand-over) off the
revocation's path: two pairs of workers measured by bench/propagation.py in one run, taking turns
(200 revocations each, a shared machine at a load average of 10-16), gave revoke -> refused p50
41 ms, p99 121 ms with the payload acted on, against p50 64 ms, p99 258 ms when listeners
ignored kind and ref and waited for the read. The schema lets several Keyplane schemas share one
database (the tests do) without waking each other.

**Listening.** :class:`ChangeListener` holds one connection of its own (not from the pool) in
autocommit, ``LISTEN``s, and proves the connection by hearing its own notification on a private
channel: once before it reports ``on_up``, then every second when nothing arrives. A missing
echo, a terminated backend or a connection that stops answering for a few seconds (TCP user
timeout) is reported through ``on_down``; it reconnects with backoff. The connection must reach
PostgreSQL directly or through a pooler in *session* mode: through a transaction-mode pooler
(which does not support ``LISTEN``) the echo never comes back, so the worker stays on the fast
poll instead of trusting a deaf listener.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("keyplane.invalidation")

CHANNEL = "keyplane_changes"


def sends_notifications(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def append_and_notify(conn: Connection, insert: sa.Insert, position: sa.ColumnElement[Any],
                      kind: str, ref: str) -> int:
    """Runs ``insert`` (one row of the change log) and queues its notification, in one round
    trip; returns the row's position. Delivered by PostgreSQL at commit."""
    row = insert.returning(position.label("position")).cte("appended")
    payload = sa.cast(sa.func.json_build_object(
        "p", row.c.position, "s", sa.func.current_schema(),
        "k", sa.literal(kind, sa.Text), "r", sa.literal(ref, sa.Text)), sa.Text)
    query = sa.select(row.c.position, sa.func.pg_notify(CHANNEL, payload))
    return int(conn.execute(query).scalar_one())


@dataclass(frozen=True, slots=True)
class Heard:
    """One notification: the change's position, and its kind and ref (``None`` when a
    payload lacks them: a listener then relies on its read of the log)."""

    position: int
    schema: str
    kind: str | None
    ref: str | None


def parse(payload: str) -> Heard | None:
    """A notification's payload, or ``None`` when it is not one of ours."""
    try:
        data = json.loads(payload)
        position, schema = data["p"], data["s"]
    except (ValueError, TypeError, KeyError):
        return None
    kind, ref = data.get("k"), data.get("r")
    if not isinstance(position, int) or not isinstance(schema, str):
        return None
    if not isinstance(kind, str) or not isinstance(ref, str):
        kind = ref = None
    return Heard(position, schema, kind, ref)


def application_name(schema: str) -> str:
    """The listening connection's ``application_name`` (at most 63 bytes are kept)."""
    return f"keyplane listen {schema}"[:63]


class ChangeListener:
    """One thread listening for committed changes on its own PostgreSQL connection."""

    PING_SECONDS = 1.0  # a check of the connection when nothing arrived for this long
    SILENCE_SECONDS = 3.0  # no echo (or data unacknowledged) this long: the connection is dead
    MAX_BACKOFF = 5.0

    def __init__(self, engine: Engine, *,
                 on_change: Callable[[int, str | None, str | None], None],
                 on_down: Callable[[], None], on_up: Callable[[], None]) -> None:
        self.engine = engine
        self.on_change = on_change
        self.on_down = on_down
        self.on_up = on_up
        self.connected = threading.Event()
        self.received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # the psycopg connection while listening
        self._waker: tuple[socket.socket, socket.socket] | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._waker = socket.socketpair()  # stop() writes here: no wait for a timeout
        self._thread = threading.Thread(target=self._run, args=(self._waker[0],),
                                        name="keyplane-pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._waker is not None:
            with contextlib.suppress(OSError):
                self._waker[1].send(b"x")
            self._thread.join(timeout=5)
            self._thread = None
            for end in self._waker:
                end.close()
            self._waker = None

    @property
    def backend_pid(self) -> int | None:
        """The listening connection's server process (for tests and operators); ``None`` while
        there is none, including once libpq has found the connection broken (it then reports
        pid 0, before this thread has handled the failure)."""
        conn = self._conn
        pid = int(conn.info.backend_pid) if conn is not None else 0
        return pid or None

    def _run(self, waker: socket.socket) -> None:
        backoff = 0.1
        down_logged = False
        while not self._stop.is_set():
            conn: Any = None
            try:
                conn = self._connect()
                self._conn = conn
                self._listen(conn, waker)
            except Exception as exc:  # connection errors, or the log unreadable in on_up
                was_connected = self.connected.is_set()
                self.connected.clear()
                if was_connected:
                    backoff, down_logged = 0.1, False
                if not down_logged:
                    log.warning("PostgreSQL change notifications lost (%s); reading the change "
                                "log, and polling it, until they are back", type(exc).__name__)
                    down_logged = True
                    self.on_down()
            finally:
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            if self._stop.wait(backoff * (0.5 + random.random())):  # noqa: S311 - jitter
                break
            backoff = min(backoff * 2, self.MAX_BACKOFF)
        self.connected.clear()

    def _connect(self) -> Any:
        """A connection made exactly as the pool makes them (URL, search path, timeouts), then
        taken out of the pool for good."""
        pooled = self.engine.raw_connection()
        conn = pooled.driver_connection
        pooled.detach()
        if conn is None:
            raise RuntimeError("the pool gave no connection")
        try:
            conn.rollback()  # the pool's ping may have left a transaction open
            conn.autocommit = True
            _bound_silence(conn.fileno(), self.SILENCE_SECONDS)
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen(self, conn: Any, waker: socket.socket) -> None:
        """Hands on each change of this schema. The connection proves itself by notifying its
        own private channel (an echo) and hearing it back: first before it counts as listening,
        then whenever nothing arrived for ``PING_SECONDS``. No echo within ``SILENCE_SECONDS``
        means notifications do not reach it (a pooler in transaction mode, a dead network)."""
        schema = str(conn.execute("SELECT current_schema()").fetchone()[0])
        # how operators (and tests) find this connection in pg_stat_activity
        conn.execute("SELECT set_config('application_name', %s, false)",
                     (application_name(schema),))
        echo = f"keyplane_echo_{secrets.token_hex(8)}"
        conn.execute(f"LISTEN {CHANNEL}")
        conn.execute(f"LISTEN {echo}")
        conn.execute(f"NOTIFY {echo}")
        awaiting: float | None = time.monotonic()  # when the unanswered echo was sent
        with selectors.DefaultSelector() as sockets:  # epoll: any fd number (select(): < 1024)
            sockets.register(conn.fileno(), selectors.EVENT_READ)
            sockets.register(waker, selectors.EVENT_READ)
            while not self._stop.is_set():
                awaiting = self._hear(conn, schema, echo, awaiting)
                if not sockets.select(self.PING_SECONDS) and awaiting is None:
                    conn.execute(f"NOTIFY {echo}")  # raises once the server or network is gone
                    awaiting = time.monotonic()

    def _hear(self, conn: Any, schema: str, echo: str, awaiting: float | None) -> float | None:
        """Handles what is readable now, and what arrived during the last command (psycopg
        keeps it); returns when the echo still awaited was sent (``None``: it came back)."""
        for notice in conn.notifies(timeout=0):
            if notice.channel == echo:
                awaiting = None
                if not self.connected.is_set():
                    log.info("listening for changes on PostgreSQL channel %s", CHANNEL)
                    self.connected.set()
                    self.on_up()
                continue
            heard = parse(notice.payload) if notice.channel == CHANNEL else None
            if heard is None or heard.schema != schema:
                continue  # another schema's log
            self.received += 1
            self.on_change(heard.position, heard.kind, heard.ref)
        if awaiting is not None and time.monotonic() - awaiting > self.SILENCE_SECONDS:
            raise TimeoutError("PostgreSQL did not deliver this connection's own NOTIFY")
        return awaiting


def _bound_silence(fd: int, seconds: float) -> None:
    """Makes the kernel drop the connection when data stays unacknowledged (or an idle
    connection's keepalives go unanswered) for about ``seconds``, so a dead network surfaces as
    an error instead of a check that blocks for many minutes."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # not a Unix socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_USER_TIMEOUT", int(seconds * 1000)),
                                ("TCP_KEEPIDLE", max(1, int(seconds))),
                                ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
                option = getattr(socket, name, None)
                if option is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
    finally:
        sock.close()
