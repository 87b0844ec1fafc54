"""What Keyplane learns from a key's uses, as signed webhooks to a real receiver:
``key.used_from_new_ip`` once per new network (an IPv4 /24, an IPv6 /64; a bounded set per key)
and ``key.denied_burst`` once per window when a key is refused more than N times. Both are
raised by the usage flush, never on the verify path. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.helpers import code, create_key
from tests.integration.procs import wait_until
from tests.support import SettableClock
from tests.webhook_receiver import Receiver

Site = tuple[Keyplane, httpx2.Client, Tenant, str, Receiver]


@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[Site]:
    url, schema = database
    receiver = Receiver().start()
    try:
        with serving(url, schema, tmp_path, clock, webhook_allow_private_targets=True,
                     webhook_poll_seconds=0.05, expiry_interval_seconds=0,
                     usage_flush_seconds=3600, known_networks_per_key=3,
                     denied_burst_limit=5, denied_burst_window_seconds=300) as (kp, http):
            tenant = make_tenant(kp)
            r = http.post("/v1/webhooks", json={
                "url": receiver.url, "events": ["key.used_from_new_ip", "key.denied_burst"]},
                headers=auth(tenant.management_key))
            assert r.status_code == 201, r.text
            receiver.secrets.append(r.json()["secret"])
            verifier = kp.keys.create(SYSTEM, None, {"name": "gateway", "require_tls": False,
                                                     "scopes": ["keys:verify"]},
                                      operator=True).secret
            yield kp, http, tenant, verifier, receiver
    finally:
        receiver.stop()


def test_a_key_used_from_a_new_network_is_reported_once_per_network(
    site: Site, clock: SettableClock
) -> None:
    kp, http, tenant, verifier, receiver = site
    key = create_key(http, tenant.management_key, name="Zapier", scopes=["contacts:read"],
                     require_tls=False)

    def use(ip: str, times: int = 2) -> None:
        clock.advance(minutes=1)
        for _ in range(times):  # the second is answered from the caches (fast path)
            assert code(http, verifier, key["key"], ip=ip) == "VALID"

    def reported() -> list[tuple[str, str]]:
        return [(r.payload["data"]["object"]["address"], r.payload["data"]["object"]["network"])
                for r in receiver.of_type("key.used_from_new_ip")]

    use("203.0.113.5")
    kp.usage.flush()
    use("203.0.113.77")  # the same /24
    use("203.0.113.5")
    kp.usage.flush()
    use("198.51.100.9")  # a new network
    use("198.51.100.10")  # both in one flush: reported once
    kp.usage.flush()
    wait_until(lambda: len(reported()) == 1, 10)
    assert reported()[0][1] == "198.51.100.0/24"
    assert reported()[0][0] in ("198.51.100.9", "198.51.100.10")
    got = receiver.of_type("key.used_from_new_ip")[0]
    assert got.valid_with == [True]
    data = got.payload["data"]
    assert data["tenant_id"] == tenant.id and data["actor"] == "system:usage"
    assert data["object"]["id"] == key["id"] and data["object"]["name"] == "Zapier"
    assert data["object"]["known_networks"] == ["203.0.113.0/24"]
    assert key["key"] not in got.body.decode()

    use("2001:db8:1:2::5")
    use("2001:db8:1:2:ffff::1")  # the same /64
    kp.usage.flush()
    wait_until(lambda: len(reported()) == 2, 10)
    assert reported()[1] == ("2001:db8:1:2::5", "2001:db8:1:2::/64")

    # three networks are remembered (known_networks_per_key=3): a fourth pushes out the one
    # seen longest ago, which is news again when it comes back
    use("192.0.2.1")
    kp.usage.flush()
    wait_until(lambda: len(reported()) == 3, 10)
    use("203.0.113.9")
    kp.usage.flush()
    wait_until(lambda: len(reported()) == 4, 10)
    assert reported()[3][1] == "203.0.113.0/24"
    kp.usage.flush()
    assert len(reported()) == 4
    # the management key, used from this test's one address, was learnt silently
    assert {r.payload["data"]["object"]["id"]
            for r in receiver.of_type("key.used_from_new_ip")} == {key["id"]}


def test_a_burst_of_refusals_is_reported_once_per_window(
    site: Site, clock: SettableClock
) -> None:
    kp, http, tenant, verifier, receiver = site
    key = create_key(http, tenant.management_key, name="Leaked", scopes=["contacts:read"],
                     require_tls=False)
    quiet = create_key(http, tenant.management_key, name="Quiet", scopes=["contacts:read"],
                       require_tls=False)
    r = http.patch(f"/v1/keys/{key['id']}", json={"enabled": False},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200, r.text
    for _ in range(5):  # five refusals: not more than the limit
        assert code(http, verifier, key["key"]) == "DISABLED"
    assert code(http, verifier, quiet["key"], scopes=["contacts:write"]) == \
        "INSUFFICIENT_SCOPE"
    kp.usage.flush()
    assert receiver.of_type("key.denied_burst") == []
    assert code(http, verifier, key["key"]) == "DISABLED"  # the sixth, counted across flushes
    kp.usage.flush()
    wait_until(lambda: len(receiver.of_type("key.denied_burst")) == 1, 10)
    got = receiver.of_type("key.denied_burst")[0]
    assert got.valid_with == [True]
    obj = got.payload["data"]["object"]
    assert obj["id"] == key["id"] and obj["denied"] == 6 and obj["threshold"] == 5
    assert obj["window_seconds"] == 300 and obj["codes"] == {"DISABLED": 1}
    assert got.payload["data"]["tenant_id"] == tenant.id

    for _ in range(10):  # the same window: no second event
        assert code(http, verifier, key["key"]) == "DISABLED"
    kp.usage.flush()
    clock.advance(minutes=5)  # a new window
    for _ in range(6):
        assert code(http, verifier, key["key"], ip="192.0.2.8") == "DISABLED"
    kp.usage.flush()
    wait_until(lambda: len(receiver.of_type("key.denied_burst")) == 2, 10)
    assert receiver.of_type("key.denied_burst")[1].payload["data"]["object"]["denied"] == 6
    assert {r.payload["data"]["object"]["id"]
            for r in receiver.of_type("key.denied_burst")} == {key["id"]}
    # refused uses are not "used from": nothing about 192.0.2.8
    assert receiver.of_type("key.used_from_new_ip") == []
