"""Real processes for the multi-worker suites: Keyplane workers (uvicorn running the app
factory, as ``keyplane serve --workers N`` does) and a throwaway ``redis-server`` that a test
may kill and restart without touching the Redis other people use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import redis

from keyplane.bootstrap import Keyplane, build
from keyplane.config import Settings
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, make_tenant
from tests.support import free_port, postgres_schema


@contextmanager
def postgres_database() -> Iterator[str]:
    """A URL whose connections land in a fresh PostgreSQL schema (dropped afterwards), usable
    by other processes too."""
    with postgres_schema() as (url, schema):
        yield f"{url}?options={quote(f'-csearch_path={schema}')}"


@dataclass
class Setup:
    kp: Keyplane  # this process's view of the database the workers share (not serving)
    url: str
    data_dir: Path  # the peppers file the workers share
    tenant: Tenant
    verifier: str  # an operator key with keys:verify


@contextmanager
def prepared_database(tmp: Path) -> Iterator[Setup]:
    """A migrated PostgreSQL schema with a tenant and a verifier key, for worker processes."""
    with postgres_database() as url:
        data_dir = tmp / "data"
        kp = build(Settings(database_url=url, data_dir=data_dir), migrate_db=True)
        kp.catalogue.seed()
        tenant = make_tenant(kp)
        verifier = kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                                  "require_tls": False}, operator=True).secret
        try:
            yield Setup(kp, url, data_dir, tenant, verifier)
        finally:
            kp.close()


class Worker:
    """One Keyplane worker process on a loopback port."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.env = env
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Worker:
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "keyplane.web.asgi:app_factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
             "--no-access-log"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 30) -> Worker:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()}")
            try:
                if httpx2.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.name} did not start:\n{self.log()}")

    def readiness(self) -> dict[str, Any]:
        out: dict[str, Any] = httpx2.get(self.url + "/readyz", timeout=5).json()
        return out

    def terminate(self, timeout: float = 20) -> bool:
        """SIGTERM, as a process manager stops a worker; waits for the exit. True when it shut
        down gracefully (uvicorn re-raises the signal after its graceful shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
            finished = f"Finished server process [{self.proc.pid}]" in self.log()
            return code in (0, -signal.SIGTERM) and finished
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"worker {self.name} ignored SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_env(database_url: str, data_dir: Path, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env.update({"KEYPLANE_DATABASE_URL": database_url, "KEYPLANE_DATA_DIR": str(data_dir),
                "KEYPLANE_LOG_LEVEL": "info"})
    for name, value in settings.items():
        env["KEYPLANE_" + name.upper()] = str(value)
    return env


@contextmanager
def workers(env: dict[str, str], log_dir: Path, count: int = 2) -> Iterator[list[Worker]]:
    started = [Worker(env, log_dir, f"worker-{'ab'[i] if i < 2 else i}") for i in range(count)]
    try:
        for w in started:  # start together, then wait for each
            w.spawn()
        for w in started:
            w.wait_ready()
        yield started
    finally:
        for w in started:
            w.kill()


class RedisServer:
    """A private ``redis-server`` (no persistence) on a free port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def subscribers(self, channel: str) -> int:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            counts = dict(client.pubsub_numsub(channel))
        finally:
            client.close()
        return int(counts.get(channel.encode(), 0))


@contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> float:
    """Polls ``predicate`` until it is true; returns the seconds it took (fails on timeout)."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
