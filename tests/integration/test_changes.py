"""GET /v1/changes: the change stream SDKs follow, as server-sent events and as a long poll."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.services.keys import IssuedKey
from keyplane.services.throttle import AUTH_FAILURES
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.procs import (
    Setup,
    prepared_database,
    wait_until,
    worker_env,
    workers,
)
from tests.support import REDIS_URL, SettableClock

Items = Iterator[tuple[str, Any]]


@contextmanager
def stream(url: str, key: str, read_timeout: float = 5.0,
           **headers: str) -> Iterator[tuple[httpx2.Response, Items]]:
    """An open server-sent event stream and its items in order: ("event", fields),
    ("comment", text). Waiting longer than ``read_timeout`` for the next line fails."""
    with httpx2.Client(timeout=httpx2.Timeout(10, read=read_timeout)) as client, \
            client.stream("GET", url, headers={**auth(key), "Accept": "text/event-stream",
                                               **headers}) as response:
        yield response, _items(response)


def _items(response: httpx2.Response) -> Items:
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")
        elif event:
            yield "event", event
            event = {}


def next_item(items: Items, kind: str = "event") -> Any:
    for got, value in items:
        if got == kind:
            return value
    raise AssertionError(f"the stream ended while waiting for a {kind}")


def data(event: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(event["data"])
    return out


def new_key(kp: Keyplane, tenant: Tenant, **body: Any) -> tuple[str, str]:
    issued = kp.keys.create(SYSTEM, tenant.id, {"name": "k", "owner_id": tenant.admin_id,
                                                "scopes": ["contacts:read"], **body})
    return issued.key.id, issued.secret


def head(http: httpx2.Client, verifier: str) -> int:
    r = http.get("/v1/changes", headers=auth(verifier))
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []
    return int(r.json()["position"])


def test_a_long_poll_answers_as_soon_as_a_revocation_commits(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    key_id, _ = new_key(keyplane, tenant)
    start = head(http, verifier_key)
    answer: dict[str, Any] = {}

    def poll() -> None:
        began = time.monotonic()
        r = http.get("/v1/changes", params={"after": start, "wait": 30},
                     headers=auth(verifier_key))
        answer.update(r.json(), elapsed=time.monotonic() - began)

    waiting = threading.Thread(target=poll)
    waiting.start()
    time.sleep(0.2)
    assert not answer  # nothing changed yet: it waits
    keyplane.keys.revoke(SYSTEM, tenant.id, key_id)
    waiting.join(10)
    assert answer["items"] == [{"position": start + 1, "kind": "key", "ref": key_id}]
    assert answer["position"] == start + 1
    assert answer["elapsed"] < 30  # it did not sit out the whole wait


def test_a_long_poll_with_nothing_new_returns_empty_after_the_wait(
        http: httpx2.Client, verifier_key: str) -> None:
    position = head(http, verifier_key)
    r = http.get("/v1/changes", params={"after": position, "wait": 0.2},
                 headers=auth(verifier_key))
    assert r.json() == {"items": [], "position": position}


def test_a_position_that_cannot_be_caught_up_gets_a_reset(
        http: httpx2.Client, verifier_key: str) -> None:
    position = head(http, verifier_key)
    r = http.get("/v1/changes", params={"after": position + 1000, "wait": 0},
                 headers=auth(verifier_key))
    assert r.json() == {"items": [{"position": position, "kind": "all", "ref": "*"}],
                        "position": position}


def test_a_tenant_verifier_follows_only_its_tenant_and_generic_changes(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    other = make_tenant(keyplane, "Globex")
    tenant_verifier = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "gw", "owner_id": tenant.admin_id, "scopes": ["keys:verify"],
        "require_tls": False}).secret
    mine, _ = new_key(keyplane, tenant)
    theirs, _ = new_key(keyplane, other)
    start = head(http, verifier_key)
    keyplane.keys.revoke(SYSTEM, other.id, theirs)
    keyplane.keys.revoke(SYSTEM, tenant.id, mine)
    keyplane.catalogue.put(SYSTEM, "invoices:read", {"description": "Read invoices"})
    keyplane.tenants.update(SYSTEM, other.id, {"name": "Globex Corp"})
    wait_until(lambda: keyplane.feed.stable_head == start + 4, 5)  # read by the feed's thread

    def seen(key: str) -> list[tuple[str, str]]:
        r = http.get("/v1/changes", params={"after": start, "wait": 0}, headers=auth(key))
        assert r.status_code == 200, r.text
        return [(i["kind"], i["ref"]) for i in r.json()["items"]]

    everything = seen(verifier_key)
    assert ("key", theirs) in everything and ("key", mine) in everything
    assert ("catalogue", "invoices:read") in everything and ("tenant", other.id) in everything
    assert seen(tenant_verifier) == [("key", mine), ("catalogue", "invoices:read")]


def test_changes_need_a_verifier_credential(http: httpx2.Client, tenant: Tenant) -> None:
    r = http.get("/v1/changes")
    assert r.status_code == 401
    r = http.get("/v1/changes", headers=auth(tenant.management_key))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"


def test_the_event_stream_sends_the_position_then_each_change(
        server: Any, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    key_id, _ = new_key(keyplane, tenant)
    with stream(server.url + "/v1/changes", verifier_key) as (response, items):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next_item(items)
        assert first["event"] == "position"
        position = data(first)["position"]
        keyplane.keys.revoke(SYSTEM, tenant.id, key_id)
        change = next_item(items)
        assert data(change) == {"position": position + 1, "kind": "key", "ref": key_id}
        assert change["id"] == str(position + 1)

    # resuming after an earlier position (as EventSource does) replays what was missed
    with stream(server.url + "/v1/changes", verifier_key,
                **{"Last-Event-ID": str(position)}) as (_, items):
        assert data(next_item(items))["position"] == position + 1  # the head
        assert data(next_item(items)) == {"position": position + 1, "kind": "key",
                                          "ref": key_id}


@pytest.fixture
def quick_keepalive(database: tuple[str, str | None], tmp_path: Path,
                    clock: SettableClock) -> Iterator[tuple[Keyplane, str]]:
    with serving(*database, tmp_path, clock, sse_keepalive_seconds=0.3) as (kp, http):
        yield kp, str(http.base_url).rstrip("/")


def tenant_verifier(kp: Keyplane) -> tuple[Tenant, IssuedKey]:
    """A new tenant and a `keys:verify` key of its admin's."""
    tenant = make_tenant(kp)
    issued = kp.keys.create(SYSTEM, tenant.id, {"name": "gw", "owner_id": tenant.admin_id,
                                                "scopes": ["keys:verify"], "require_tls": False})
    return tenant, issued


def test_the_stream_keeps_alive_and_ends_when_its_credential_is_revoked(
        quick_keepalive: tuple[Keyplane, str]) -> None:
    kp, url = quick_keepalive
    tenant, issued = tenant_verifier(kp)
    with stream(url + "/v1/changes", issued.secret) as (_, items):
        next_item(items)  # position
        assert next_item(items, "comment") == "keepalive"
        assert next_item(items, "comment") == "keepalive"
        kp.keys.revoke(SYSTEM, tenant.id, issued.key.id)
        # the credential is checked again at the next keepalive, and the stream ends (a
        # stream that went on would fail here with a read timeout)
        rest = list(items)
        assert ("comment", "keepalive") not in rest
        assert [data(v)["ref"] for kind, v in rest if kind == "event"] == [issued.key.id]


def test_the_stream_ends_when_its_address_is_refused_for_failed_credentials(
        quick_keepalive: tuple[Keyplane, str]) -> None:
    """The re-check is the verification service's authentication (step 1): an address over
    the failed-credentials limit is refused there, and so its open streams end."""
    kp, url = quick_keepalive
    _, issued = tenant_verifier(kp)
    with stream(url + "/v1/changes", issued.secret) as (_, items):
        next_item(items)  # position
        assert next_item(items, "comment") == "keepalive"
        loopback = ip_address("127.0.0.1")
        assert not any(kp.throttle.failed(AUTH_FAILURES, loopback)
                       for _ in range(kp.throttle.limit))
        assert kp.throttle.failed(AUTH_FAILURES, loopback) is not None  # now refused
        rest = list(items)  # a stream that went on would fail here with a read timeout
        assert ("comment", "keepalive") not in rest


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_revocation_through_one_worker_reaches_a_stream_on_another(tmp_path: Path) -> None:
    with prepared_database(tmp_path) as s:
        env = worker_env(s.url, s.data_dir, redis_url=REDIS_URL,
                         redis_prefix="kptest-" + secrets.token_hex(4),
                         change_poll_redis_seconds=60)  # only Redis can be this fast
        with workers(env, tmp_path) as (a, b):
            wait_until(lambda: b.readiness()["invalidation"] == "redis", 5)
            times = []
            with stream(b.url + "/v1/changes", s.verifier, read_timeout=1.0) as (_, items):
                next_item(items)  # position
                for _ in range(5):
                    key_id = create_and_revoke(a.url, s)
                    start = time.perf_counter()
                    got = data(next_item(items))  # fails after 1 s without an event
                    times.append(time.perf_counter() - start)
                    assert (got["kind"], got["ref"]) == ("key", key_id)
                # an open stream does not hold up a graceful stop: SIGTERM ends it
                assert b.terminate(timeout=10)
                assert list(items) == []
    print(f"\nrevocation A -> SSE stream on B: max {max(times) * 1000:.1f} ms")
    assert max(times) < 1.0


def create_and_revoke(url: str, s: Setup) -> str:
    with httpx2.Client(base_url=url, headers=auth(s.tenant.management_key)) as http:
        r = http.post("/v1/keys", json={"name": "short-lived"})
        assert r.status_code == 201, r.text
        key_id = str(r.json()["id"])
        assert http.delete(f"/v1/keys/{key_id}").status_code == 204
    return key_id
