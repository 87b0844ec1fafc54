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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
