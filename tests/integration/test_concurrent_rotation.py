"""Concurrent rotations of one key without If-Match (issue 14, "concurrent writes"): exactly one
wins, the others get 409 with a clear error, and no key ever holds more than two live secrets.
Real HTTP, threads, SQLite and PostgreSQL.

To make the rotations truly overlap (whatever the scheduler does), the test holds the key's
write lock itself while the requests arrive (a row lock on PostgreSQL, the write lock of the
SQLite file), then lets go: every rotation read the key before any of them could change it."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx2
import psycopg
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, auth
from tests.integration.helpers import code, create_key

N = 12


class KeyLock:
    """Holds ``key_id``'s write lock from outside Keyplane, the way a slow writer would."""

    def __init__(self, url: str, schema: str | None, key_id: str) -> None:
        self.url, self.schema, self.key_id = url, schema, key_id
        self.sqlite: sqlite3.Connection | None = None
        self.pg: psycopg.Connection[Any] | None = None

    def __enter__(self) -> KeyLock:
        if self.url.startswith("sqlite"):
            path = sa.make_url(self.url).database
            assert path
            self.sqlite = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.sqlite.execute("BEGIN IMMEDIATE")
        else:
            self.pg = psycopg.connect(self.url)
            if self.schema:
                self.pg.execute(f'SET search_path TO "{self.schema}"')
            self.pg.execute("SELECT id FROM api_keys WHERE id = %s FOR UPDATE", (self.key_id,))
        return self

    def waiting(self) -> int | None:
        """How many transactions wait for this lock (None: SQLite cannot tell)."""
        if self.pg is None:
            return None
        with psycopg.connect(self.url, autocommit=True) as other:
            rows = other.execute("SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity "
                                 "WHERE cardinality(pg_blocking_pids(pid)) > 0").fetchall()
        # waiters queue behind the first one (the tuple lock): count them transitively
        blocked: set[int] = set()
        frontier = {self.pg.info.backend_pid}
        while frontier:
            frontier = {pid for pid, by in rows if pid not in blocked and frontier & set(by)}
            blocked |= frontier
        return len(blocked)

    def __exit__(self, *_: object) -> None:
        if self.sqlite is not None:
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()
        if self.pg is not None:
            self.pg.rollback()
            self.pg.close()


class WriteStarts:
    """Counts the write transactions the server's request threads begin (``BEGIN IMMEDIATE``,
    SQLite). A rotation reads the key's version first, then begins its write transaction, which
    waits for the lock: a begun write means the rotation has read. (Counting the connections
    the server's pool has checked out was not enough: a background flush holds one too, and the
    test then went on before the rotation had read, once in a full run.)"""

    def __init__(self, kp: Keyplane) -> None:
        self.engine = kp.engine
        self.count = 0
        self._lock = threading.Lock()

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE") and \
                threading.current_thread().name.startswith("AnyIO worker"):
            with self._lock:
                self.count += 1

    def __enter__(self) -> WriteStarts:
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)


def rotations_waiting(lock: KeyLock, starts: WriteStarts) -> int:
    """How many requests wait behind the key's lock: on PostgreSQL exactly (the backends it
    blocks; the pool also holds the LISTEN connection and background flushes), on SQLite the
    write transactions the server's request threads have begun."""
    waiting = lock.waiting()
    return waiting if waiting is not None else starts.count


def live_secrets(kp: Keyplane, key_id: str) -> int:
    now = kp.ctx.clock.now()
    with kp.ctx.uow(readonly=True) as uow:
        return sum(1 for s in uow.keys.secrets(key_id)
                   if s.expires_at is None or s.expires_at > now)


def test_of_concurrent_rotations_without_if_match_exactly_one_wins(
    http: httpx2.Client, tenant: Tenant, verifier_key: str, keyplane: Keyplane,
    database: tuple[str, str | None],
) -> None:
    mk = auth(tenant.management_key)
    key = create_key(http, tenant.management_key, require_tls=False)
    # a first rotation: the key already holds two secrets (the original one in its grace)
    first = http.post(f"/v1/keys/{key['id']}/rotate", json={}, headers=mk)
    assert first.status_code == 200, first.text
    assert live_secrets(keyplane, key["id"]) == 2
    base = str(http.base_url)

    def rotate() -> httpx2.Response:
        with httpx2.Client(base_url=base, timeout=60) as client:
            return client.post(f"/v1/keys/{key['id']}/rotate", json={}, headers=mk)

    url, schema = database
    with ThreadPoolExecutor(max_workers=N) as pool, WriteStarts(keyplane) as starts:
        with KeyLock(url, schema, key["id"]) as lock:
            futures: list[Future[httpx2.Response]] = [pool.submit(rotate) for _ in range(N)]
            deadline = time.monotonic() + 30
            # every rotation has read the key and waits for the lock (SQLite cannot say who
            # waits for its lock: the server's begun write transactions can)
            while rotations_waiting(lock, starts) < N:
                assert time.monotonic() < deadline, "the rotations never queued up"
                time.sleep(0.05)
            assert not any(f.done() for f in futures)  # all of them wait for the lock
        answers = [f.result() for f in futures]

    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [409] * (N - 1), [r.text for r in answers]
    for r in answers:
        if r.status_code == 409:
            error = r.json()["error"]
            assert error["code"] == "concurrent_change"
            assert "If-Match" in error["message"]
            assert '"key"' not in r.text and "kp_" not in r.text  # no secret for a loser
    winner = next(r for r in answers if r.status_code == 200).json()["key"]
    assert code(http, verifier_key, winner) == "VALID"
    assert code(http, verifier_key, first.json()["key"]) == "VALID"  # now in its grace
    assert code(http, verifier_key, key["key"]) != "VALID"  # the oldest one ended
    assert live_secrets(keyplane, key["id"]) == 2
    # one rotation audited, not thirteen
    r = http.get("/v1/audit-events", params={"action": "key.rotated", "limit": 200},
                 headers=mk)
    assert r.status_code == 200, r.text
    assert len([e for e in r.json()["items"] if e["target"] == key["id"]]) == 2


def test_rotations_one_after_another_without_if_match_all_succeed(
    http: httpx2.Client, tenant: Tenant, verifier_key: str, keyplane: Keyplane
) -> None:
    """Not concurrent, not a conflict: each rotation reads the key as the last one left it."""
    mk = auth(tenant.management_key)
    key = create_key(http, tenant.management_key, require_tls=False)
    secrets = []
    for _ in range(4):
        r = http.post(f"/v1/keys/{key['id']}/rotate", json={}, headers=mk)
        assert r.status_code == 200, r.text
        secrets.append(r.json()["key"])
        assert live_secrets(keyplane, key["id"]) <= 2
    assert code(http, verifier_key, secrets[-1]) == "VALID"
    assert code(http, verifier_key, secrets[-2]) == "VALID"
    assert code(http, verifier_key, secrets[0]) != "VALID"


def test_a_rotation_racing_an_edit_loses_with_409(
    http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, database: tuple[str, str | None]
) -> None:
    mk = auth(tenant.management_key)
    key = create_key(http, tenant.management_key, require_tls=False)
    base = str(http.base_url)
    out: dict[str, httpx2.Response] = {}

    def rotate() -> None:
        with httpx2.Client(base_url=base, timeout=60) as client:
            out["rotate"] = client.post(f"/v1/keys/{key['id']}/rotate", json={}, headers=mk)

    url, schema = database
    with WriteStarts(keyplane) as starts, KeyLock(url, schema, key["id"]) as lock:
        thread = threading.Thread(target=rotate)
        thread.start()
        deadline = time.monotonic() + 30
        while rotations_waiting(lock, starts) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if lock.pg is not None:  # the edit commits while the rotation waits behind the lock
            lock.pg.execute("UPDATE api_keys SET name = 'renamed' WHERE id = %s", (key["id"],))
            lock.pg.commit()
        else:
            assert lock.sqlite is not None
            lock.sqlite.execute("UPDATE api_keys SET name = 'renamed' WHERE id = ?",
                                (key["id"],))
            lock.sqlite.execute("COMMIT")
            lock.sqlite.execute("BEGIN")  # __exit__ rolls back an empty transaction
    thread.join(60)
    r = out["rotate"]
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "concurrent_change"
    assert live_secrets(keyplane, key["id"]) == 1
