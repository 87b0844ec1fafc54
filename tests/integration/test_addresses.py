"""Address hygiene over real HTTP (issue 8, item 13): a CIDR is refused, never silently widened,
when it has host bits set or leading zeros, and IPv6 zone ids are refused everywhere (in
allowlists, and in ``/v1/verify``'s ``ip``, where one must neither crash nor match)."""

from __future__ import annotations

from typing import Any

import httpx2
import pydantic
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.config import Settings
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth
from tests.integration.helpers import create_key, verify

REFUSED = [
    ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ("010.0.0.0/8", "did you mean 10.0.0.0/8"),
    ("1.2.3.4/08", "leading zeros"),
    ("fe80::1%eth0", "zone id"),
    ("fe80::%1/64", "zone id"),
]


def refused(r: httpx2.Response, field: str, says: str) -> None:
    assert r.status_code == 422, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["field"] == field and says in err["message"], err


@pytest.mark.parametrize(("cidr", "says"), REFUSED)
def test_allowlists_refuse_cidrs_they_would_have_widened(
        http: httpx2.Client, tenant: Tenant, operator_key: str, cidr: str, says: str) -> None:
    mk = auth(tenant.management_key)
    r = http.post("/v1/keys", json={"name": "k", "allowed_ips": ["192.0.2.0/24", cidr]},
                  headers=mk)
    refused(r, "allowed_ips", says)
    key = create_key(http, tenant.management_key, allowed_ips=["192.0.2.0/24"])
    refused(http.patch(f"/v1/keys/{key['id']}", json={"allowed_ips": [cidr]}, headers=mk),
            "allowed_ips", says)
    op = auth(operator_key)
    r = http.patch(f"/v1/tenants/{tenant.id}", json={"policy": {"allowed_ips": [cidr]}},
                   headers=op)
    refused(r, "policy.allowed_ips", says)
    r = http.post("/v1/tenants", json={"name": "Initech", "policy": {"allowed_ips": [cidr]}},
                  headers=op)
    refused(r, "policy.allowed_ips", says)
    assert http.get(f"/v1/keys/{key['id']}", headers=mk).json()["allowed_ips"] == [
        "192.0.2.0/24"]
    assert http.get(f"/v1/tenants/{tenant.id}", headers=op).json()["policy"][
        "allowed_ips"] == []


def test_the_canonical_form_is_accepted_and_stored(http: httpx2.Client, tenant: Tenant) -> None:
    key = create_key(http, tenant.management_key,
                     allowed_ips=["10.0.0.0/8", "2001:DB8::/32", "192.0.2.7"])
    assert key["allowed_ips"] == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]


def test_a_zone_id_in_verify_ip_is_refused_by_the_route_and_the_fast_path(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "lan", "owner_id": tenant.admin_id, "scopes": ["contacts:read"],
        "allowed_ips": ["fe80::/64"]}).secret
    for _ in range(3):  # the route first, then cache hits on the fast path
        assert verify(http, verifier_key, secret, ip="fe80::1")["code"] == "VALID"
        for zoned in ("fe80::1%eth0", "fe80::1%1", "fe80::1%25eth0"):
            r = http.post("/v1/verify", json={"key": secret, "ip": zoned, "tls": True},
                          headers=auth(verifier_key))
            refused(r, "ip", "is not an IPv4 or IPv6 address")


def test_trusted_proxies_follow_the_same_rules() -> None:
    assert Settings(trusted_proxies="10.0.0.0/8, 192.0.2.1").trusted_proxies == [
        "10.0.0.0/8", "192.0.2.1/32"]
    for bad, says in REFUSED:
        with pytest.raises(pydantic.ValidationError) as info:
            Settings(trusted_proxies=bad)
        assert "trusted_proxies[0]" in str(info.value) and says in str(info.value)
