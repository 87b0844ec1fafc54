"""Test helpers shared by every suite: a settable clock, a real server on a loopback port,
and databases (SQLite files and real PostgreSQL schemas)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn

POSTGRES_URL = os.environ.get(
    "KEYPLANE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("KEYPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("KEYPLANE_TEST_REQUIRE_SERVICES") == "1"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def postgres_available() -> bool:
    url = sa.make_url(POSTGRES_URL)
    return port_open(url.host or "127.0.0.1", url.port or 5432)


def redis_available() -> bool:
    from urllib.parse import urlparse

    u = urlparse(REDIS_URL)
    return port_open(u.hostname or "127.0.0.1", u.port or 6379)


class SettableClock:
    """A UTC clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime.now(UTC).replace(microsecond=0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self.current

    def timestamp(self) -> float:
        return self.current.timestamp()

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self.current = self.current + timedelta(**delta)
        return self.current

    def set(self, at: datetime) -> None:
        self.current = at


@contextmanager
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema for one test (dropped afterwards): (url, schema)."""
    schema = "t_" + secrets.token_hex(6)
    url = POSTGRES_URL
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield url, schema
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def _port_slice() -> range:
    """The ports this test process hands out: below the kernel's ephemeral range (which
    ``bind(0)`` and every outgoing connection draw from), one slice per xdist worker."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    start = max(1024, low - 12_000)
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) % count if worker[2:].isdigit() else 0
    size = (low - start) // count
    return range(start + index * size, start + (index + 1) * size)


_PORTS = _port_slice()
_next_port = 0
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback port no other test process will be given. ``bind(0)`` alone is not enough
    under xdist: the kernel may hand the same port to another worker (or to an outgoing
    connection) between our close and the server's bind, and a test then talks to another
    test's server."""
    global _next_port
    with _port_lock:
        for _ in range(len(_PORTS)):
            port = _PORTS[_next_port % len(_PORTS)]
            _next_port += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use, or in TIME_WAIT from an earlier run
                return port
    raise RuntimeError(f"no free port in {_PORTS}")


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(app: Any, port: int | None = None, **options: Any) -> RunningServer:
    """Serve ``app`` with uvicorn on a loopback port in a thread; returns once it accepts.
    ``options`` go to ``uvicorn.Config`` (e.g. ``proxy_headers=False``)."""
    port = port or free_port()
    options = {"log_level": "warning", "access_log": False, "lifespan": "on", **options}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", server, thread)


def sqlite_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'keyplane.db'}"


def typo(secret: str) -> str:
    """``secret`` with its last character changed (always changed: a fixed replacement would
    leave one key in 62 as it was)."""
    return secret[:-1] + ("y" if secret.endswith("x") else "x")
