"""PostgreSQL LISTEN/NOTIFY carries committed changes between Keyplane instances without Redis
(storage/sql/notify.py): each change is announced by PostgreSQL at its commit (never for a
rollback), another instance drops its cached entry long before its poll could, losing the
listening connection degrades and it listens again; on SQLite nothing changes (the poll)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane, build
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.notify import CHANNEL, application_name, parse
from tests.conftest import make_settings, make_tenant
from tests.integration.procs import wait_until
from tests.support import POSTGRES_URL, SettableClock, postgres_schema

# the poll is far slower than anything measured here: only a notification explains a fast
# refusal (while degraded the worker polls every POLL seconds, once listening every minute)
POLL = 5.0


def instance(tmp_path: Path, url: str, schema: str | None, clock: SettableClock,
             migrate: bool = False) -> Keyplane:
    settings = make_settings(tmp_path, url, change_poll_seconds=POLL,
                             change_poll_redis_seconds=60)
    return build(settings, clock=clock, schema=schema, migrate_db=migrate)


@pytest.fixture
def pair(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[tuple[Keyplane, Keyplane]]:
    """Two serving instances on one database, without Redis."""
    url, schema = database
    one = instance(tmp_path, url, schema, clock, migrate=True)
    two = instance(tmp_path, url, schema, clock)
    for kp in (one, two):
        kp.start()
    try:
        yield one, two
    finally:
        for kp in (one, two):
            kp.close()


def refused_after(one: Keyplane, two: Keyplane, timeout: float) -> float:
    """Seconds from a revocation committed by ``one`` to ``two`` refusing the key it had
    cached."""
    tenant = make_tenant(one)
    issued = one.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
    assert two.verifier.verify(issued.secret, tls=True).valid  # cached in two
    one.keys.revoke(SYSTEM, tenant.id, issued.key.id)
    return wait_until(
        lambda: two.verifier.verify(issued.secret, tls=True).decision.code.value == "REVOKED",
        timeout, interval=0.005)


def test_a_revocation_reaches_the_other_instance_by_notify_on_postgres_only(
        pair: tuple[Keyplane, Keyplane], database: tuple[str, str | None]) -> None:
    one, two = pair
    if database[1] is None:  # SQLite: no listener, the poll alone, as before
        assert one.propagation.listener is None and two.propagation.mode == "polling"
        return
    wait_until(lambda: two.propagation.mode == "notify", 10)
    listener = two.propagation.listener
    assert listener is not None
    heard = listener.received
    took = [refused_after(one, two, POLL / 2) for _ in range(3)]
    assert max(took) < POLL / 2  # well before the poll: the notification did it
    assert listener.received > heard
    assert two.feed.period == 60  # the poll is only the safety net while listening


@pytest.mark.postgres
def test_losing_the_listening_connection_degrades_and_it_listens_again(
        tmp_path: Path, clock: SettableClock, caplog: pytest.LogCaptureFixture) -> None:
    with postgres_schema() as (url, schema):
        one = instance(tmp_path, url, schema, clock, migrate=True)
        two = instance(tmp_path, url, schema, clock)
        try:
            for kp in (one, two):
                kp.start()
            listener = two.propagation.listener
            assert listener is not None
            wait_until(lambda: two.propagation.mode == "notify", 10)
            lost = listener.backend_pid
            ttls: list[float] = []
            original = two.propagation._listener_down

            def down() -> None:
                # handled slowly, as under load: meanwhile the broken connection (whose pid libpq
                # then reports as 0) must not pass for a new one
                time.sleep(0.3)
                original()
                ttls.append(two.verifier.cache.ttl)
            listener.on_down = down  # record the degraded state as it is entered
            with caplog.at_level(logging.INFO, "keyplane.invalidation"), \
                    two.engine.connect() as conn:
                name = conn.execute(sa.text(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": lost}).scalar_one()
                assert name == application_name(schema)  # operators can find it
                assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                    {"pid": lost}).scalar_one()
                wait_until(lambda: listener.backend_pid not in (None, lost)
                           and two.propagation.mode == "notify", 10)
            assert ttls == [two.settings.degraded_cache_ttl_seconds]  # degraded meanwhile
            assert two.verifier.cache.ttl == two.settings.cache_ttl_seconds  # and back
            messages = [r.getMessage() for r in caplog.records]
            assert any("change notifications lost" in m for m in messages)
            assert any("NOTIFY invalidation restored" in m for m in messages)
            assert refused_after(one, two, POLL / 2) < POLL / 2  # heard by notification again
        finally:
            for kp in (one, two):
                kp.close()


@pytest.mark.postgres
def test_a_change_is_announced_at_commit_and_a_rolled_back_one_never(
        tmp_path: Path, clock: SettableClock) -> None:
    with postgres_schema() as (url, schema):
        kp = instance(tmp_path, url, schema, clock, migrate=True)  # never started, like the CLI
        listen = psycopg.connect(POSTGRES_URL, autocommit=True)
        try:
            listen.execute(f"LISTEN {CHANNEL}")

            def heard(timeout: float) -> list[dict[str, object]]:
                out = []
                for n in listen.notifies(timeout=timeout):
                    payload = json.loads(n.payload)
                    if payload["s"] == schema:  # another test's schema is none of ours
                        out.append(payload)
                return out

            with kp.ctx.uow() as uow:
                kp.ctx.changed(uow, "key", "key_rolled_back")
                assert heard(0.3) == []  # nothing before commit
            assert heard(0.5) == []  # nor after a rollback

            with kp.ctx.uow() as uow:
                kp.ctx.changed(uow, "key", "key_committed")
                kp.ctx.changed(uow, "tenant", "t" * 40)  # the longest ref the log holds
                uow.commit()
            got = heard(1.0)
            head = kp.feed.source.head()
            assert got == [{"p": head - 1, "s": schema, "k": "key", "r": "key_committed"},
                           {"p": head, "s": schema, "k": "tenant", "r": "t" * 40}]
            found = parse(json.dumps(got[0]))
            assert found is not None and (found.position, found.kind) == (head - 1, "key")
        finally:
            listen.close()
            kp.close()


def test_payloads_that_are_not_ours_are_ignored() -> None:
    for payload in ("", "12", "12:public", "{}", '{"p": "1", "s": "x"}', "[1]", "null"):
        assert parse(payload) is None
    for payload in ('{"p": 7, "s": "public", "k": "key", "r": 5}', '{"p": 7, "s": "public"}'):
        found = parse(payload)  # no usable kind and ref: the listener reads the log instead
        assert found is not None and (found.position, found.kind, found.ref) == (7, None, None)


@pytest.mark.postgres
def test_change_notify_off_keeps_the_poll_alone(tmp_path: Path, clock: SettableClock) -> None:
    with postgres_schema() as (url, schema):
        kp = build(make_settings(tmp_path, url, change_notify=False), clock=clock,
                   schema=schema, migrate_db=True)
        try:
            kp.start()
            assert kp.propagation.listener is None and kp.propagation.mode == "polling"
            time.sleep(0.05)
            assert kp.feed.period == kp.settings.change_poll_seconds
        finally:
            kp.close()
