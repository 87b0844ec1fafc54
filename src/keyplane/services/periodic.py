"""A job every process runs on a timer, of which a database lease lets one act per interval
(the expiry reminders, the unused-key policy): its owner id and its thread."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import timedelta


def lease_owner() -> str:
    """Who holds a job's lease: this host and process, and a nonce (a restarted process with
    the same pid is someone else)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class Timer:
    """Calls ``run`` every ``min(60 s, interval)`` in a daemon thread: every instance looks
    often, and the lease ``run`` claims lets one of them act per interval. A failed run is
    logged and retried at the next tick."""

    def __init__(self, name: str, interval: timedelta, run: Callable[[], object],
                 log: logging.Logger, failed: str) -> None:
        self.name, self.interval, self.run, self.log, self.failed = (
            name, interval, run, log, failed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        poll = min(60.0, self.interval.total_seconds())
        while not self._stop.wait(poll):
            try:
                self.run()
            except Exception:
                self.log.exception(self.failed)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
