"""The management client: against the real server, and error mapping with MockTransport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest

from keyplane.core import tokens
from keyplane.sdk import (
    NOT_GIVEN,
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    Conflict,
    KeyplaneError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from tests.conftest import Tenant
from tests.sdk.conftest import data_key
from tests.support import RunningServer, free_port


def test_key_lifecycle(kp: Client, verifier_key: str, server: RunningServer) -> None:
    issued = kp.keys.create(name="zapier", scopes=["contacts:read"], require_tls=False,
                            description="the Zapier integration", meta={"team": "ops"})
    secret = issued.pop("key")
    assert tokens.parse(secret) is not None
    assert issued["name"] == "zapier" and issued["meta"] == {"team": "ops"}

    shown = kp.keys.get(issued["id"])
    assert "key" not in shown
    assert shown["id"] == issued["id"]
    assert issued["id"] in [k["id"] for k in kp.paginate(kp.keys.list, q="zapier")]

    with Client(server.url, token=verifier_key) as verifier:
        assert verifier.verify(secret, scopes=["contacts:read"])["valid"] is True
        assert verifier.verify(secret, scopes=["contacts:write"])["code"] == \
            "INSUFFICIENT_SCOPE"

        edited = kp.keys.update(issued["id"], scopes=["contacts:write"], name="zapier 2")
        assert edited["scopes"] == ["contacts:write"] and edited["name"] == "zapier 2"
        assert verifier.verify(secret, scopes=["contacts:write"])["valid"] is True

        rotated = kp.keys.rotate(issued["id"], grace_period_seconds=0)
        assert rotated["key"] != secret
        assert verifier.verify(secret)["valid"] is False
        assert verifier.verify(rotated["key"])["valid"] is True

        copy = kp.keys.duplicate(issued["id"], name="zapier copy")
        assert copy["id"] != issued["id"] and copy["scopes"] == ["contacts:write"]

        assert kp.keys.revoke(issued["id"]) is None
        assert verifier.verify(rotated["key"])["code"] == "REVOKED"


def test_errors_map_to_the_hierarchy(kp: Client, server: RunningServer) -> None:
    with pytest.raises(NotFound) as missing:
        kp.keys.get("key_doesnotexist")
    assert missing.value.status == 404 and missing.value.code == "not_found"

    with pytest.raises(ValidationError) as invalid:
        kp.keys.create(name="x", scopes=["nope:read"])
    assert invalid.value.field == "scopes"
    assert isinstance(invalid.value, APIError) and isinstance(invalid.value, KeyplaneError)

    with pytest.raises(ValidationError) as bad_ttl:
        kp.keys.create(name="x", expires_in_days=-3)
    assert bad_ttl.value.field == "expires_in_days"

    with Client(server.url, token=tokens.generate("kp")) as stranger, \
            pytest.raises(AuthenticationError) as unauth:
        stranger.keys.list()
    assert unauth.value.status == 401

    data_only = data_key(kp, "contacts:read")["key"]
    with Client(server.url, token=data_only) as weak, pytest.raises(PermissionDenied):
        weak.keys.create(name="escalate", scopes=["keys:write"])


def test_services_accounts_groups_and_catalogue(kp: Client, tenant: Tenant) -> None:
    group = kp.groups.create(name="sales", scopes=["contacts:write"])
    account = kp.service_accounts.create(name="API - Zapier", group_ids=[group["id"]])
    assert account["object"] == "service_account"
    key = kp.keys.create(name="zap", scopes=["contacts:read"], owner_id=account["id"])
    assert key["owner_id"] == account["id"]
    assert kp.service_accounts.update(account["id"], enabled=False)["enabled"] is False
    assert "contacts:read" in {s["name"] for s in kp.scopes.list()["items"]}
    actions = {e["action"] for e in kp.audit_events.list(limit=50)["items"]}
    assert any(a.startswith("key") for a in actions)


def test_async_client(server: RunningServer, tenant: Tenant) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, token=tenant.management_key) as kp:
            made = [await kp.keys.create(name=f"k{i}", scopes=["forms:read"]) for i in range(3)]
            seen = [k["id"] async for k in kp.paginate(kp.keys.list, q="k", limit=1)]
            assert {k["id"] for k in made} <= set(seen)
            with pytest.raises(NotFound):
                await kp.keys.get("key_nope")

    asyncio.run(scenario())


def test_unreachable_server_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", token="t", timeout=2) as kp, \
            pytest.raises(APIConnectionError):
        kp.keys.list()


# -- without a network ------------------------------------------------------------------------

def mock(handler: Any) -> Client:
    return Client("http://keyplane.test", token="kp_secret", transport=httpx2.MockTransport(
        handler))


def error(status: int, code: str, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> httpx2.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return httpx2.Response(status, json={"error": body}, headers=headers)


@pytest.mark.parametrize(("status", "cls"), [
    (400, ValidationError), (401, AuthenticationError), (403, PermissionDenied),
    (404, NotFound), (409, Conflict), (422, ValidationError), (429, RateLimited),
    (500, APIError), (503, APIError),
])
def test_status_to_exception(status: int, cls: type[APIError]) -> None:
    kp = mock(lambda request: error(status, "some_code", "what happened", "name",
                                    {"Retry-After": "7"}))
    with pytest.raises(cls) as info:
        kp.keys.get("key_1")
    exc = info.value
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message, exc.field) == (status, "some_code",
                                                              "what happened", "name")
    if isinstance(exc, RateLimited):
        assert exc.retry_after == 7


def test_non_json_error_body_and_transport_errors() -> None:
    kp = mock(lambda request: httpx2.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(APIError) as info:
        kp.keys.list()
    assert (info.value.status, info.value.code) == (502, "http_error")

    def broken(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(APIConnectionError):
        mock(broken).keys.list()


def test_requests_are_shaped_as_the_api_expects() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.method == "DELETE":
            return httpx2.Response(204)
        return httpx2.Response(200, json={"items": [], "next_cursor": None})

    kp = mock(handler)
    kp.keys.create(name="n", scopes=("a:read",), expires_in_days=None)
    kp.keys.update("key_1", enabled=False)
    assert kp.for_tenant("ten_9").keys.revoke("key/../x") is None
    kp.operator_keys.list(enabled=True)
    assert kp.keys.create(name="m", description=NOT_GIVEN) is not None

    create, update, revoke, listing, create2 = seen
    assert create.headers["authorization"] == "Bearer kp_secret"
    assert json.loads(create.content) == {"name": "n", "scopes": ["a:read"],
                                          "expires_in_days": None}
    assert json.loads(update.content) == {"enabled": False}
    # ids are one path segment (never a traversal); for_tenant adds the operator's tenant
    assert revoke.url.raw_path == b"/v1/keys/key%2F..%2Fx?tenant_id=ten_9"
    assert listing.url.path == "/v1/operator/keys"
    assert listing.url.params["enabled"] == "true"
    assert "tenant_id" not in listing.url.params
    assert json.loads(create2.content) == {"name": "m", "scopes": []}
