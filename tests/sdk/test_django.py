"""KeyplaneMiddleware in front of a real Django ASGI application, served by uvicorn, verifying
against the real Keyplane server; ``@requires`` on Django views (sync and async)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from keyplane.bootstrap import Keyplane
from keyplane.sdk import Client, requires
from tests.conftest import Tenant
from tests.sdk.conftest import Protected, data_key, served_uses
from tests.support import typo


def whoami(request: HttpRequest) -> JsonResponse:
    who = request.scope["keyplane"]  # type: ignore[attr-defined]
    return JsonResponse({**who, "scopes": sorted(who["scopes"])})


@requires("contacts:read")
def list_contacts(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"items": []})


@requires("contacts:write")
async def create_contact(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"id": "con_1", "body": json.loads(request.body)}, status=201)


urlpatterns = [
    path("whoami", whoami),
    path("contacts", list_contacts),
    path("contacts/new", create_contact),
]


@pytest.fixture(scope="module")
def django_app() -> Iterator[Any]:
    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                           SECRET_KEY="test-only-" + "x" * 40, MIDDLEWARE=[],
                           INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    from django.core.asgi import get_asgi_application

    yield get_asgi_application()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_django_views_get_the_identity_and_their_scope_checks(
        protect: Callable[..., Protected], kp: Client, django_app: Any) -> None:
    app = protect(django_app)
    reader = data_key(kp, "contacts:read")
    writer = data_key(kp, "contacts:write")

    r = app.http.get("/whoami")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    assert r.headers["www-authenticate"].startswith("Bearer")

    r = app.http.get("/whoami", headers=bearer(reader["key"]))
    assert r.status_code == 200
    assert r.json()["key_id"] == reader["id"] and r.json()["scopes"] == ["contacts:read"]

    assert app.http.get("/contacts", headers=bearer(reader["key"])).status_code == 200
    refused = app.http.post("/contacts/new", json={"name": "Ada"},
                            headers=bearer(reader["key"]))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]

    created = app.http.post("/contacts/new", json={"name": "Ada"},
                            headers=bearer(writer["key"]))
    assert created.status_code == 201 and created.json()["body"] == {"name": "Ada"}

    r = app.http.get("/whoami", headers=bearer(typo(reader["key"])))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"


def test_a_revoked_key_is_refused_by_the_django_app(
        protect: Callable[..., Protected], kp: Client, django_app: Any) -> None:
    app = protect(django_app, changes="off", cache_ttl=0.2)  # the TTL alone bounds it here
    key = data_key(kp, "contacts:read")
    assert app.http.get("/contacts", headers=bearer(key["key"])).status_code == 200
    kp.keys.revoke(key["id"])
    end = time.monotonic() + 5
    while app.http.get("/contacts", headers=bearer(key["key"])).status_code == 200:
        assert time.monotonic() < end, "the revoked key kept working"
        time.sleep(0.05)
    assert app.http.get("/contacts", headers=bearer(key["key"])).status_code == 401


def test_the_middleware_answers_lifespan_for_django_and_reports_usage_at_shutdown(
        protect: Callable[..., Protected], kp: Client, django_app: Any, keyplane: Keyplane,
        tenant: Tenant) -> None:
    app = protect(django_app, usage_report_seconds=0)  # Django itself refuses lifespan
    assert app.middleware.follower is not None  # started at lifespan startup, not lazily
    key = data_key(kp, "contacts:read")
    for _ in range(4):
        assert app.http.get("/contacts", headers=bearer(key["key"])).status_code == 200
    assert served_uses(keyplane, tenant, key["id"]) == 1
    app.running.stop()  # lifespan shutdown reaches the middleware
    assert served_uses(keyplane, tenant, key["id"]) == 4
