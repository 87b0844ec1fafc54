"""A small CRM API protected by Keyplane, using only the public SDK.

    KEYPLANE_URL=http://127.0.0.1:8080 KEYPLANE_VERIFIER_KEY=kp_... \\
        uvicorn examples.crm.app:app --port 8000 --no-proxy-headers

Contacts, calendars, opportunities and payments, each with list / create / get. Reading needs
``<area>:read``, creating needs ``<area>:write`` (which implies read). Every record belongs to
the tenant of the key that created it; a key never sees another tenant's records.

Optional settings: ``CRM_LEGACY_HEADERS`` (comma-separated header names that may carry the key,
e.g. ``X-Location-Key``), ``CRM_TRUSTED_PROXIES`` (CIDRs of proxies whose X-Forwarded-For and
X-Forwarded-Proto are believed), ``CRM_CACHE_TTL`` (seconds).
"""

# no "from __future__ import annotations": FastAPI reads these annotations at runtime

import itertools
import os
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from keyplane.sdk import KeyplaneMiddleware, requires

Identity = dict[str, Any]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactIn(_In):
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str | None = Field(default=None, max_length=40)
    company: str | None = Field(default=None, max_length=200)


class CalendarIn(_In):
    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field(default="UTC", max_length=64)


class OpportunityIn(_In):
    name: str = Field(min_length=1, max_length=200)
    contact_id: str | None = Field(default=None, max_length=40)
    value_cents: int = Field(default=0, ge=0)
    stage: Literal["lead", "qualified", "proposal", "won", "lost"] = "lead"


class PaymentIn(_In):
    contact_id: str = Field(max_length=40)
    amount_cents: int = Field(gt=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    description: str | None = Field(default=None, max_length=500)


AREAS: dict[str, tuple[str, type[_In]]] = {
    "contacts": ("con", ContactIn),
    "calendars": ("cal", CalendarIn),
    "opportunities": ("opp", OpportunityIn),
    "payments": ("pay", PaymentIn),
}


class Store:
    """In-memory records per tenant (a real product would use its database)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, tenant: str, area: str, fields: dict[str, Any], by: str) -> dict[str, Any]:
        with self._lock:
            record = {"id": f"{AREAS[area][0]}_{next(self._ids)}", **fields,
                      "created_at": datetime.now(UTC).isoformat(), "created_by_key": by}
            self._data.setdefault((tenant, area), {})[record["id"]] = record
            return record

    def list(self, tenant: str, area: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._data.get((tenant, area), {}).values())

    def get(self, tenant: str, area: str, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get((tenant, area), {}).get(record_id)


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


def _tenant(who: Identity) -> str:
    # operator keys belong to no tenant; they have no data scopes, so this is a safe bucket
    return who["tenant_id"] or "-"


def _add_area(app: FastAPI, store: Store, area: str, model: type[_In]) -> None:
    read, write = requires(f"{area}:read"), requires(f"{area}:write")

    @app.get(f"/{area}", tags=[area], summary=f"List {area}")
    async def list_records(who: Annotated[Identity, Depends(read)]) -> dict[str, Any]:
        return {"items": store.list(_tenant(who), area)}

    @app.post(f"/{area}", tags=[area], status_code=201, summary=f"Create one of {area}")
    async def create_record(body: model,  # type: ignore[valid-type]
                            who: Annotated[Identity, Depends(write)]) -> dict[str, Any]:
        fields = body.model_dump()  # type: ignore[attr-defined]
        if fields.get("contact_id") and store.get(_tenant(who), "contacts",
                                                  fields["contact_id"]) is None:
            raise HTTPException(422, "contact_id: no such contact")
        return store.add(_tenant(who), area, fields, who["key_id"])

    @app.get(f"/{area}/{{record_id}}", tags=[area], summary=f"Show one of {area}")
    async def get_record(record_id: str,
                         who: Annotated[Identity, Depends(read)]) -> dict[str, Any]:
        record = store.get(_tenant(who), area, record_id)
        if record is None:
            raise HTTPException(404, f"no such record in {area}")
        return record


def create_app(url: str, token: str, **keyplane_options: Any) -> FastAPI:
    """The CRM app. ``keyplane_options`` go to :class:`KeyplaneMiddleware` (legacy_headers,
    trusted_proxies, cache_ttl, ...)."""
    app = FastAPI(title="Example CRM", description="A product API protected by Keyplane.")
    store = Store()
    app.state.store = store

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                422: "invalid_request"}.get(exc.status_code, "http_error")
        field = str(exc.detail).partition(":")[0] if exc.status_code == 422 else None
        return _error(exc.status_code, code, str(exc.detail), field)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, "invalid_request", f"{field}: {first.get('msg')}", field)

    @app.get("/healthz", tags=["health"], summary="Liveness (no key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me", tags=["identity"], summary="Who is calling: the key's tenant and scopes")
    async def me(request: Request) -> dict[str, Any]:
        who = request.state.keyplane
        return {**who, "scopes": sorted(who["scopes"])}

    for area, (_, model) in AREAS.items():
        _add_area(app, store, area, model)

    app.add_middleware(KeyplaneMiddleware, url=url, token=token,
                       exempt_paths=["/healthz", "/docs", "/openapi.json"], **keyplane_options)
    return app


def _list_env(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def from_env() -> FastAPI:
    """The app configured from the environment (``uvicorn --factory examples.crm.app:from_env``).
    """
    token = os.environ.get("KEYPLANE_VERIFIER_KEY")
    if not token:
        raise RuntimeError("set KEYPLANE_VERIFIER_KEY to a Keyplane key with scope keys:verify")
    options: dict[str, Any] = {"legacy_headers": _list_env("CRM_LEGACY_HEADERS"),
                               "trusted_proxies": _list_env("CRM_TRUSTED_PROXIES")}
    if os.environ.get("CRM_CACHE_TTL"):
        options["cache_ttl"] = float(os.environ["CRM_CACHE_TTL"])
    return create_app(os.environ.get("KEYPLANE_URL", "http://127.0.0.1:8080"), token, **options)


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """``examples.crm.app:app`` is built on first access, not at import."""
    global _app
    if name == "app":
        if _app is None:
            _app = from_env()
        return _app
    raise AttributeError(name)
