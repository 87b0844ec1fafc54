"""A real nginx (Debian's, ``auth_request``) in front of an upstream that is not Keyplane's,
asking /v1/forward-auth: what a product in any language gets (tests/integration/nginx.py holds
the README's configuration)."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from tests.conftest import Tenant, make_tenant
from tests.integration.forward_support import key, proxied
from tests.integration.nginx import echo_upstream, nginx

README = Path(__file__).resolve().parents[2] / "README.md"

__all__ = ["proxied"]  # the fixture: Keyplane trusting 127.0.0.1/32, with the route map


@pytest.fixture
def edge(proxied: tuple[Keyplane, httpx2.Client]) -> Iterator[tuple[Keyplane, httpx2.Client,
                                                                     httpx2.Client]]:
    """(keyplane, its API, a client of nginx)"""
    kp, api = proxied
    with echo_upstream() as upstream, \
            nginx(str(api.base_url).removeprefix("http://").rstrip("/"), upstream) as url, \
            httpx2.Client(base_url=url, timeout=10) as client:
        yield kp, api, client


def tenant_key(kp: Keyplane, **fields: object) -> tuple[Tenant, str]:
    tenant = make_tenant(kp)
    return tenant, key(kp, tenant.id, tenant.admin_id, **fields)


def test_a_valid_key_passes_and_the_upstream_sees_who_called(
        edge: tuple[Keyplane, httpx2.Client, httpx2.Client]) -> None:
    kp, _, client = edge
    tenant, secret = tenant_key(kp, scopes=["contacts:write"])
    forged = {"X-Keyplane-Tenant-Id": "ten_forged", "X-Keyplane-Scopes": "payments:write"}
    for headers in ({"Authorization": f"Bearer zapier:{secret}"}, {"X-API-Key": secret}):
        r = client.post("/contacts/1?page=2", headers={**headers, **forged})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["path"] == "/contacts/1?page=2" and seen["method"] == "POST"
        got = seen["headers"]
        assert got["x-keyplane-tenant-id"] == tenant.id  # never what the client sent
        assert got["x-keyplane-owner-id"] == tenant.admin_id
        assert got["x-keyplane-key-id"].startswith("key_")
        assert got["x-keyplane-scopes"] == "contacts:read contacts:write"


def test_refusals_reach_the_client_with_keyplanes_bodies(
        edge: tuple[Keyplane, httpx2.Client, httpx2.Client]) -> None:
    kp, _, client = edge
    _, reader = tenant_key(kp, scopes=["contacts:read"])
    r = client.post("/contacts/1", headers={"X-API-Key": reader})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    r = client.get("/payments", headers={"X-API-Key": reader})  # unmapped
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    r = client.get("/contacts/1")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    assert r.headers.get_list("www-authenticate") == ['Bearer realm="api"']
    r = client.get("/contacts/1", headers={"X-API-Key": reader[:-2] + "zz"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"


def test_a_revoked_key_is_refused_within_the_bound(
        edge: tuple[Keyplane, httpx2.Client, httpx2.Client]) -> None:
    kp, api, client = edge
    tenant, secret = tenant_key(kp, scopes=["contacts:read"])
    assert client.get("/contacts/1", headers={"X-API-Key": secret}).status_code == 200
    key_id = kp.verifier.verify(secret).snapshot.key_id  # type: ignore[union-attr]
    r = api.delete(f"/v1/keys/{key_id}", headers={"Authorization":
                                                  f"Bearer {tenant.management_key}"})
    assert r.status_code == 204, r.text
    revoked = time.monotonic()
    # one process here: at once; across workers, within KEYPLANE_CHANGE_POLL_SECONDS (0.5 s)
    # without Redis, milliseconds with it. nginx caches nothing in front of Keyplane.
    while (status := client.get("/contacts/1", headers={"X-API-Key": secret}).status_code) \
            == 200 and time.monotonic() - revoked < 0.5:
        time.sleep(0.02)
    assert status == 401


def test_a_rate_limited_key_gets_429_with_retry_after(
        edge: tuple[Keyplane, httpx2.Client, httpx2.Client]) -> None:
    kp, _, client = edge
    _, limited = tenant_key(kp, scopes=["contacts:read"],
                            ratelimit={"limit": 2, "window_seconds": 60})
    replies = [client.get("/contacts/1", headers={"X-API-Key": limited}) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    r = replies[2]
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit-limit"] == "2" and r.headers["ratelimit-remaining"] == "0"


def readme_block(language: str) -> str:
    """The README's ``language`` block (indented in a list item), as written there."""
    found = re.search(rf"\n *```{language}\n(.*?)\n *```", README.read_text(), re.S)
    assert found is not None, f"the README has no {language} block"
    return textwrap.dedent(found.group(1))


def test_the_readmes_short_nginx_snippet_works_as_written(
        proxied: tuple[Keyplane, httpx2.Client]) -> None:
    kp, api = proxied
    site = readme_block("nginx")
    for placeholder in ("http://your_api;", "http://keyplane:8080/v1/forward-auth;"):
        assert placeholder in site, f"the README's nginx snippet lost {placeholder!r}"
    keyplane = str(api.base_url).removeprefix("http://").rstrip("/")
    site = site.replace("http://your_api;", "http://product;").replace(
        "http://keyplane:8080/v1/forward-auth;", f"http://{keyplane}/v1/forward-auth;")
    tenant, secret = tenant_key(kp, scopes=["contacts:read"])
    with echo_upstream() as upstream, nginx(keyplane, upstream, site) as url, \
            httpx2.Client(base_url=url, timeout=10) as client:
        r = client.get("/contacts/1", headers={"X-API-Key": secret,
                                               "X-Keyplane-Tenant-Id": "ten_forged"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["x-keyplane-tenant-id"] == tenant.id
        assert r.json()["headers"]["x-keyplane-key-id"].startswith("key_")
        assert client.post("/contacts/1", headers={"X-API-Key": secret}).status_code == 403
        assert client.get("/contacts/1").status_code == 401


def test_the_address_is_nginxs_peer_and_a_forged_forwarded_for_is_ignored(
        edge: tuple[Keyplane, httpx2.Client, httpx2.Client]) -> None:
    kp, _, client = edge
    _, elsewhere = tenant_key(kp, scopes=["contacts:read"], allowed_ips=["203.0.113.0/24"])
    _, here = tenant_key(kp, scopes=["contacts:read"], allowed_ips=["127.0.0.1/32"])
    forged = {"X-Forwarded-For": "203.0.113.5", "X-Real-IP": "203.0.113.5"}
    r = client.get("/contacts/1", headers={"X-API-Key": elsewhere, **forged})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
    assert client.get("/contacts/1", headers={"X-API-Key": here, **forged}).status_code == 200
    # and a TLS-only key over nginx's plain http is refused, whatever the client claims
    _, tls_only = tenant_key(kp, scopes=["contacts:read"], require_tls=True)
    r = client.get("/contacts/1", headers={"X-API-Key": tls_only, "X-Forwarded-Proto": "https"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "tls_required"
