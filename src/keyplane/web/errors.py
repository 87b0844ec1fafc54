"""Every error as ``{"error": {"code", "message", "field"?}}`` with a fitting status."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from keyplane.core import errors as e

STATUS: dict[type[e.KeyplaneError], int] = {
    e.ValidationError: 422,
    e.AuthenticationError: 401,
    e.PermissionDenied: 403,
    e.NotFound: 404,
    e.Conflict: 409,
    e.PreconditionFailed: 412,
    e.RateLimited: 429,
    e.Unavailable: 503,
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return {"error": body}


def error_response(exc: e.KeyplaneError) -> JSONResponse:
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="keyplane"'
    if isinstance(exc, e.RateLimited):
        headers.update(ratelimit_headers(exc.retry_after, exc.limit, exc.remaining))
    return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=status,
                        headers=headers)


def ratelimit_headers(retry_after: int, limit: int, remaining: int = 0) -> dict[str, str]:
    """``Retry-After`` and the ``RateLimit-*`` fields (IETF httpapi draft; seconds): every
    429 carries all four."""
    return {"Retry-After": str(retry_after), "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(retry_after)}


def _field(loc: tuple[Any, ...]) -> str:
    """The field a pydantic error location names, without the location's kind and the tags
    pydantic adds inside unions (a request model's class name, ``constrained-int`` …)."""
    tags = _model_names()
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")
             and not (isinstance(p, str) and (p in tags or "-" in p or "[" in p))]
    return ".".join(parts) or "body"


@functools.cache
def _model_names() -> frozenset[str]:
    from keyplane.web.schemas import Body

    names, stack = set(), list(Body.__subclasses__())
    while stack:
        model = stack.pop()
        names.add(model.__name__)
        stack.extend(model.__subclasses__())
    return frozenset(names)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.KeyplaneError)
    async def _domain(_: Request, exc: e.KeyplaneError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("malformed_json", "the body is not valid JSON"),
                                status_code=400)
        field = _field(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value"))
        return JSONResponse(
            error_body("invalid_request", f"{field}: {msg}", field), status_code=422
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
