"""A suspended app reaches the SDK gateways that cache its tokens, though app changes no longer
go to every tenant: a tenant's gateway (connected to an app another tenant registered) and the
operator's both drop the cached token at once."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant
from tests.integration.oauth_support import approved_app
from tests.integration.procs import wait_until
from tests.integration.test_changes_tenancy import connect, tenant_verifier
from tests.sdk.conftest import Protected, wait_live
from tests.support import RunningServer


def test_a_suspended_app_reaches_the_tenant_verifier_that_caches_its_tokens(
        http: httpx2.Client, server: RunningServer, keyplane: Keyplane, tenant: Tenant,
        operator_key: str, verifier_key: str, protect: Callable[..., Protected]) -> None:
    """Globex's gateway (its own tenant verifier, and the operator's) caches a Globex access
    token of an app Acme registered; the operator suspends the app; both gateways refuse the
    token at once, from the change stream (a cached VALID verdict would otherwise be reused)."""
    globex = make_tenant(keyplane, "Globex")
    # the gateways run over plain HTTP: Globex lets its tokens be used so (TLS policy)
    keyplane.tenants.update(SYSTEM, globex.id, {"policy": {"require_tls_default": False}})
    partner = approved_app(http, tenant.management_key, operator_key)
    token = connect(http, server, partner, globex)["access_token"]

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"tenant_id": request.scope["keyplane"]["tenant_id"]})

    gateways = []
    for key in (tenant_verifier(keyplane, globex), verifier_key):
        gw = protect(Starlette(routes=[Route("/whoami", whoami)]), token=key)
        wait_live(server, gw.middleware)
        r = gw.http.get("/whoami", headers=auth(token))
        assert r.status_code == 200 and r.json() == {"tenant_id": globex.id}, r.text
        gateways.append(gw)
    r = http.post(f"/v1/apps/{partner.app_id}/suspend", json={"reason": "abuse"},
                  headers=auth(operator_key))
    assert r.status_code == 200, r.text
    for gw in gateways:
        wait_until(lambda gw=gw: gw.http.get("/whoami", headers=auth(token)).status_code
                   in (401, 403), 10)  # fails if the cached VALID verdict outlived it
