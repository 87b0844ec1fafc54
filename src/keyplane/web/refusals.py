"""Refused management calls reach the audit log: a 403, or a 404 on an id the caller may not
see, answered to an authenticated caller on a ``/v1`` route is handed to the audit service
(which aggregates it; nothing is written on the request) and then answered as every error is."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from keyplane.core import errors as e
from keyplane.core.rights import Caller
from keyplane.web.errors import STATUS, error_response


def install(app: FastAPI) -> None:
    @app.exception_handler(e.PermissionDenied)
    async def _forbidden(request: Request, exc: e.PermissionDenied) -> JSONResponse:
        audit_refusal(request, exc)
        return error_response(exc)

    @app.exception_handler(e.NotFound)
    async def _not_found(request: Request, exc: e.NotFound) -> JSONResponse:
        audit_refusal(request, exc)
        return error_response(exc)


def audit_refusal(request: Request, exc: e.KeyplaneError) -> None:
    caller = request.scope.get("keyplane.caller")
    if not isinstance(caller, Caller) or not request.url.path.startswith("/v1/"):
        return  # not authenticated (that is not a refusal of a call), or not the API
    route = getattr(request.scope.get("route"), "path", None) or request.url.path
    target = next((str(v) for v in request.path_params.values()), None)
    status = next(s for cls, s in STATUS.items() if isinstance(exc, cls))
    request.app.state.keyplane.audit.refused(caller, f"{request.method} {route}", status,
                                             exc.code, target)
