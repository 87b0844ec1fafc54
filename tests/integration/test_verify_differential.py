"""POST /v1/verify gives the same answer, with the same side effects, whether the pure-ASGI
fast path (web/fastverify.py) or the FastAPI route answers it.

Two Keyplanes start from copies of one SQLite database (the same tenants, keys and secrets; one
pepper, one clock) with empty caches. One serves the app as ``keyplane serve`` does, the other
the same app without the fast path (``create_app(..., fast_verify=False)``), both in process
through httpx2's ASGI transport. Hypothesis sends the same random sequences of requests to
both: valid and invalid bodies, credentials (valid, revoked, expired, another tenant's,
malformed, unknown, without ``keys:verify``, operator, tenant verifier, rate-limited), client
addresses and TLS (``X-Forwarded-For`` and ``X-Forwarded-Proto`` from a trusted proxy), and
keys in every state (IP-locked, rate-limited, under a usage quota, expired, revoked, disabled,
TLS-only, another tenant's). Every answer's status and body must be the same, and after each
sequence so must the usage counted (flushed to each database) and which addresses the failure
throttle blocks. The caches and the throttle live on from one sequence to the next, so repeats
are answered from remembered answers, and addresses get blocked along the way.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from keyplane.bootstrap import Keyplane, build
from keyplane.core import tokens
from keyplane.core.rights import SYSTEM
from keyplane.services.verification import AUTH_FAILURES, VERIFY_FAILURES
from keyplane.web.app import create_app
from tests.conftest import make_settings, make_tenant
from tests.support import SettableClock

FAILURE_LIMIT = 10
PROXY = "127.0.0.1"  # the ASGI transport's client: a trusted proxy, so X-Forwarded-* count
CLIENTS = [f"192.0.2.{i}" for i in range(1, 41)] + ["2001:db8::1", "2001:db8:0:1::2"]
END_USERS = [*(f"203.0.113.{i}" for i in range(1, 9)), *(f"198.51.100.{i}" for i in range(1, 5)),
             "2001:db8:5::5", "2001:db8:6::6"]


@dataclass
class World:
    callers: dict[str, str]  # name → credential
    keys: dict[str, str]  # name → key (or a string that is no key)
    tenants: list[str]


def _prepare(kp: Keyplane, clock: SettableClock) -> World:
    acme = make_tenant(kp, "Acme")
    other = make_tenant(kp, "Other")

    def op(name: str, scopes: list[str], **extra: Any) -> tuple[str, str]:
        issued = kp.keys.create(SYSTEM, None, {"name": name, "scopes": scopes,
                                               "require_tls": False, **extra}, operator=True)
        return issued.key.id, issued.secret

    def key(tenant_id: str, owner: str, name: str, **extra: Any) -> tuple[str, str]:
        issued = kp.keys.create(SYSTEM, tenant_id, {"name": name, "owner_id": owner, **extra})
        return issued.key.id, issued.secret

    callers = {
        "operator": op("gw", ["keys:verify"])[1],
        "operator without keys:verify": op("ro", ["platform:read"])[1],
        "operator over TLS only": op("tls", ["keys:verify"], require_tls=True)[1],
        "tenant verifier": key(acme.id, acme.admin_id, "tv", scopes=["keys:verify"],
                               require_tls=False)[1],
        "rate-limited verifier": key(acme.id, acme.admin_id, "rv", scopes=["keys:verify"],
                                     require_tls=False,
                                     ratelimit={"limit": 10_000, "window_seconds": 3600})[1],
        "tenant key without keys:verify": key(acme.id, acme.admin_id, "tk",
                                              scopes=["contacts:read"], require_tls=False)[1],
        "other tenant's verifier": key(other.id, other.admin_id, "ov", scopes=["keys:verify"],
                                       require_tls=False)[1],
        "unknown": tokens.generate("kp"),
        "malformed": "not a key at all",
    }
    revoked_id, callers["revoked"] = op("old", ["keys:verify"])
    kp.keys.revoke(SYSTEM, None, revoked_id, operator=True)
    callers["expired"] = op("brief", ["keys:verify"], expires_in_days=1)[1]

    keys = {
        "valid": key(acme.id, acme.admin_id, "k1", scopes=["contacts:read"])[1],
        "writer": key(acme.id, acme.admin_id, "k2", scopes=["contacts:write"],
                      require_tls=False)[1],
        "ip-locked": key(acme.id, acme.admin_id, "k3", allowed_ips=["203.0.113.0/24"])[1],
        "rate-limited": key(acme.id, acme.admin_id, "k4",
                            ratelimit={"limit": 3, "window_seconds": 3600})[1],
        "quota": key(acme.id, acme.admin_id, "k5", remaining=4)[1],
        "expired": key(acme.id, acme.admin_id, "k6", expires_in_days=1)[1],
        "other tenant's": key(other.id, other.admin_id, "k7")[1],
        "unknown": tokens.generate("kp"),
        "malformed": "zzz",
    }
    revoked_id, keys["revoked"] = key(acme.id, acme.admin_id, "k8")
    kp.keys.revoke(SYSTEM, acme.id, revoked_id)
    disabled_id, keys["disabled"] = key(acme.id, acme.admin_id, "k9")
    kp.keys.update(SYSTEM, acme.id, disabled_id, {"enabled": False})
    clock.advance(days=2)  # the one-day keys have expired
    return World(callers, keys, [acme.id, other.id])


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[tuple[World, Keyplane, Keyplane]]:
    clock = SettableClock()
    options: dict[str, Any] = {"failure_limit": FAILURE_LIMIT, "failure_window_seconds": 600,
                               "trusted_proxies": [f"{PROXY}/32"], "usage_flush_seconds": 3600}
    seed = build(make_settings(tmp_path, f"sqlite:///{tmp_path / 'seed.db'}", **options),
                 clock=clock, migrate_db=True)
    seed.start()
    try:
        world = _prepare(seed, clock)
    finally:
        seed.close()
    built = []
    for name in ("fast", "route"):
        shutil.copy(tmp_path / "seed.db", tmp_path / f"{name}.db")
        kp = build(make_settings(tmp_path, f"sqlite:///{tmp_path / name}.db", **options),
                   clock=clock)
        kp.start()
        built.append(kp)
    try:
        yield world, built[0], built[1]
    finally:
        for kp in built:
            kp.close()


def _weighted(choices: dict[st.SearchStrategy[Any], int]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn about as often as its weight says (``st.one_of`` draws
    its branches evenly, however often one is repeated)."""
    return st.sampled_from([s for s, weight in choices.items() for _ in range(weight)]).flatmap(
        lambda s: s)


def _bodies(world: World) -> st.SearchStrategy[bytes]:
    known = st.sampled_from(sorted(world.keys)).map(world.keys.__getitem__)  # by name: stable
    key = _weighted({known: 4, known.map(lambda k: f"zapier:{k}"): 1,
                     known.map(lambda k: f"Bearer {k}"): 1, st.text(max_size=12): 1})
    fields = st.fixed_dictionaries({"key": key}, optional={
        "scopes": st.lists(st.sampled_from(["contacts:read", "contacts:write", "payments:read",
                                            "no such scope"]), max_size=3, unique=True),
        "ip": _weighted({st.sampled_from(END_USERS): 8, st.just(None): 3,
                         st.sampled_from(["not an ip", "203.0.113.300"]): 1}),
        "tls": st.sampled_from([True, True, True, True, False, None]),
        "tenant_id": st.sampled_from([None, None, None, *world.tenants, world.tenants[0]]),
    })
    valid = fields.map(lambda b: json.dumps(b).encode())
    invalid = st.one_of(
        fields.map(lambda b: json.dumps({**b, "extra": 1}).encode()),  # unknown field
        fields.map(lambda b: json.dumps({**b, "tls": "yes"}).encode()),  # wrong type
        fields.map(lambda b: json.dumps({**b, "scopes": "contacts:read"}).encode()),
        fields.map(lambda b: json.dumps({**b, "tenant_id": "not an id!"}).encode()),
        fields.map(lambda b: json.dumps({**b, "key": b["key"] + "\x00"}).encode()),
        fields.map(lambda b: json.dumps({**b, "key": "k" * 401}).encode()),
        fields.map(lambda b: json.dumps({k: v for k, v in b.items() if k != "key"}).encode()),
        st.just(b'{"key": "\\ud800"}'),
        st.just(b"[]"),
        st.just(b"{not json"),
        st.just(b""),
    )
    return _weighted({valid: 6, invalid: 1})


def _requests(world: World) -> st.SearchStrategy[list[tuple[bytes, dict[str, str]]]]:
    callers = world.callers
    # mostly callers that may verify, so that most requests reach the key
    credential = st.sampled_from(sorted(callers) + [
        name for name in ("operator", "tenant verifier", "rate-limited verifier",
                          "other tenant's verifier") for _ in range(3)]).map(callers.__getitem__)
    headers = st.fixed_dictionaries({
        "X-Forwarded-For": st.sampled_from(CLIENTS),
        "X-Forwarded-Proto": st.sampled_from(["https", "https", "https", "http"]),
    }, optional={
        "Authorization": st.one_of(credential.map(lambda c: f"Bearer {c}"),
                                   credential.map(lambda c: f"Bearer gateway:{c}")),
        "X-API-Key": credential,
        "X-Location-Id": st.sampled_from([*world.tenants, "not an id!"]),
        "User-Agent": st.just("differential/1"),
    })
    # most requests carry a credential, and few a Location ID (the route's alone to read)
    usual = st.tuples(headers, credential).map(lambda hc: {
        k: v for k, v in {"Authorization": f"Bearer {hc[1]}", **hc[0]}.items()
        if k != "X-Location-Id"})
    # a request is often repeated at once: the second one may be a remembered answer
    return st.lists(st.tuples(st.tuples(_bodies(world), _weighted({usual: 4, headers: 1})),
                              st.integers(1, 2)),
                    min_size=1, max_size=4).map(
        lambda rs: [request for request, times in rs for _ in range(times)])


def _normal(response: httpx2.Response) -> tuple[int, Any]:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and isinstance(body.get("ratelimit"), dict):
        body["ratelimit"].pop("reset_at", None)  # wall-clock seconds: compared loosely below
    return response.status_code, body


def _side_effects(kp: Keyplane) -> dict[str, Any]:
    kp.usage.flush()
    with kp.engine.connect() as conn:
        usage, scopes, denials = (sorted((tuple(r) for r in conn.execute(sa.text(q))), key=repr)
                                  for q in ("SELECT key_id, hour, outcome, count FROM key_usage",
                                            "SELECT key_id, scope, day, count FROM "
                                            "key_scope_usage",
                                            "SELECT key_id, outcome, reason, ip FROM "
                                            "key_denials"))
    blocked = sorted((kind, address) for kind in (AUTH_FAILURES, VERIFY_FAILURES)
                     for address in [PROXY, *CLIENTS, *END_USERS]
                     if kp.throttle.retry_after(kind, ip_address(address)) is not None)
    return {"usage": usage, "scopes": scopes, "denials": denials, "blocked": blocked}


def test_the_fast_path_and_the_route_answer_alike(
        twins: tuple[World, Keyplane, Keyplane]) -> None:
    world, fast_kp, route_kp = twins
    loop = asyncio.new_event_loop()
    clients = [httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app, client=(PROXY, 5000)),
                                  base_url="http://keyplane")
               for app in (create_app(fast_kp, manage_lifecycle=False),
                           create_app(route_kp, manage_lifecycle=False, fast_verify=False))]
    seen: dict[str, int] = {}
    remembered_before = 0

    # no shrinking: both Keyplanes keep their state from one sequence to the next, so a
    # shorter sequence would not meet the same state; a failure names its requests instead.
    # The same sequences on every run, so that what they reach (asserted below) is stable.
    @settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate],
              derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_requests(world))
    def check(requests: list[tuple[bytes, dict[str, str]]]) -> None:
        compare(requests)

    def compare(requests: list[tuple[bytes, dict[str, str]]]) -> None:
        nonlocal remembered_before
        for body, headers in requests:
            fast, route = (loop.run_until_complete(client.post(
                "/v1/verify", content=body,
                headers={"Content-Type": "application/json", **headers}))
                for client in clients)
            assert _normal(fast) == _normal(route), (body, headers)
            if fast.status_code == 200:
                seen[fast.json()["code"]] = seen.get(fast.json()["code"], 0) + 1
                reset = [r.json()["ratelimit"] for r in (fast, route)]
                if reset[0] and "reset_at" in reset[0]:
                    assert abs(reset[0]["reset_at"] - reset[1]["reset_at"]) <= 2
            else:
                seen[str(fast.status_code)] = seen.get(str(fast.status_code), 0) + 1
        assert _side_effects(fast_kp) == _side_effects(route_kp), requests
        answers = len(fast_kp.verifier.cache.answers)
        remembered_before = max(remembered_before, answers)

    # first every key, each twice, from an operator's gateway over TLS: every state is reached
    # whatever the random sequences draw
    gateway = {"Authorization": f"Bearer {world.callers['operator']}",
               "X-Forwarded-For": CLIENTS[-3], "X-Forwarded-Proto": "https"}
    try:
        for name in sorted(world.keys):
            body = json.dumps({"key": world.keys[name], "scopes": ["contacts:read"],
                               "ip": "198.51.100.1", "tls": True}).encode()
            compare([(body, gateway), (body, gateway)])
        # then what the route's model refuses, with both credentials and the key cached
        valid = {"key": world.keys["writer"], "tls": True}
        compare([(json.dumps(b).encode(), gateway) for b in (
            valid, {**valid, "extra": 1}, {**valid, "tls": "yes"}, {**valid, "tls": 1},
            {**valid, "scopes": "contacts:read"}, {**valid, "scopes": [1]},
            {**valid, "scopes": ["s"] * 51}, {**valid, "ip": 7}, {**valid, "ip": "x" * 65},
            {**valid, "tenant_id": "not an id!"}, {**valid, "tenant_id": ""},
            {**valid, "key": valid["key"] + "\x00"}, {**valid, "key": "k" * 401},
            {**valid, "key": None}, {"tls": True}, [valid], "text", None)] + [
            (raw, gateway) for raw in (b'{"key": "\\ud800"}', b"{not json", b"",
                                       b'{"key": "a", "key": 1}')])
        check()
    finally:
        for client in clients:
            loop.run_until_complete(client.aclose())
        loop.close()
    # the sequences reached what they are meant to compare (not a vacuous pass)
    for expected in ("VALID", "NOT_FOUND", "RATE_LIMITED", "IP_NOT_ALLOWED", "401", "403",
                     "422"):
        assert seen.get(expected), (expected, seen)
    assert remembered_before > 0  # some answers were given again from the fast path's cache
    assert len(route_kp.verifier.cache.answers) == 0  # and none without it
