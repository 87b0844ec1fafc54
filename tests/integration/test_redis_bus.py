"""Redis fan-out between Keyplane instances in one test process (the real Redis, a channel of
the test's own): changes reach the other instance's cache, an instance skips its own messages,
and a process that does not serve (a CLI command) still publishes its changes."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from keyplane.bootstrap import Keyplane, build
from keyplane.core.rights import SYSTEM
from tests.conftest import make_settings, make_tenant
from tests.integration.procs import wait_until
from tests.support import REDIS_URL, SettableClock

pytestmark = [pytest.mark.redis]


@pytest.fixture
def pair(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[tuple[Keyplane, Keyplane, str]]:
    """Two serving instances on one database and one Redis channel (no useful polling)."""
    url, schema = database
    prefix = "kptest-" + secrets.token_hex(4)
    settings = make_settings(tmp_path, url, redis_url=REDIS_URL, redis_prefix=prefix,
                             change_poll_redis_seconds=60)
    one = build(settings, clock=clock, schema=schema, migrate_db=True)
    two = build(settings, clock=clock, schema=schema)
    for kp in (one, two):
        kp.start()
    try:
        for kp in (one, two):
            wait_until(lambda kp=kp: kp.propagation.mode == "redis", 5)
        yield one, two, prefix
    finally:
        for kp in (one, two):
            kp.close()


def test_a_revocation_in_one_instance_drops_the_others_cache(
        pair: tuple[Keyplane, Keyplane, str]) -> None:
    one, two, _ = pair
    tenant = make_tenant(one)
    issued = one.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
    assert two.verifier.verify(issued.secret, tls=True).valid  # cached in two
    received = two.propagation.redis.received if two.propagation.redis else 0
    sent_by_one = one.propagation.redis.received if one.propagation.redis else 0
    one.keys.revoke(SYSTEM, tenant.id, issued.key.id)
    wait_until(lambda: two.verifier.verify(issued.secret, tls=True).decision.code.value ==
               "REVOKED", 1.0)
    assert two.propagation.redis is not None and two.propagation.redis.received > received
    heard = two.invalidation_lag.rows["redis"]  # /metrics' invalidation lag
    assert sum(heard[:-1]) >= 1 and 0 <= heard[-1] < 5
    # one heard its own message on the channel and skipped it
    assert one.propagation.redis is not None and one.propagation.redis.received == sent_by_one


def test_a_process_that_does_not_serve_still_publishes(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    url, schema = database
    prefix = "kptest-" + secrets.token_hex(4)
    cli = build(make_settings(tmp_path, url, redis_url=REDIS_URL, redis_prefix=prefix),
                clock=clock, schema=schema, migrate_db=True)  # never started, like the CLI
    listener = redis.Redis.from_url(REDIS_URL).pubsub()
    try:
        listener.subscribe(f"{prefix}:changes")
        assert listener.get_message(timeout=2)["type"] == "subscribe"
        cli.catalogue.seed()
        tenant = make_tenant(cli)
        issued = cli.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id})
        cli.keys.revoke(SYSTEM, tenant.id, issued.key.id)
        deadline = time.monotonic() + 2
        seen = []
        while time.monotonic() < deadline:
            message = listener.get_message(timeout=0.2)
            if message and message["type"] == "message":
                seen.append(json.loads(message["data"]))
                if seen[-1]["r"] == issued.key.id:
                    break
        assert {"k": "key", "r": issued.key.id} in [{"k": m["k"], "r": m["r"]} for m in seen]
    finally:
        listener.close()
        cli.close()
