"""``requires(*scopes)``: scope checks for endpoints behind :class:`KeyplaneMiddleware`.

As a decorator of Starlette endpoints or Django views (sync or async, with a ``request`` or
``websocket`` argument)::

    @requires("contacts:write")
    async def create_contact(request): ...

As a FastAPI dependency, which also hands the endpoint the caller's identity::

    @app.post("/contacts")
    async def create(who = Depends(requires("contacts:write"))): ...

``area:write`` implies ``area:read``. A refusal (401 without a key, 403 ``insufficient_scope``)
is the decorated endpoint's JSON response; from a dependency it is raised, and the middleware
answers it (so add the middleware with ``app.add_middleware``, inside Starlette's error
handling).
"""

# no ``from __future__ import annotations`` here: FastAPI reads the dependency's annotations
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

from keyplane.sdk._cache import Identity
from keyplane.sdk._protocol import valid_scope
from keyplane.sdk._responses import Denied, bearer_challenge

try:  # only to tell FastAPI what to inject; the SDK itself does not need Starlette
    from starlette.requests import HTTPConnection as _Connection
except ImportError:  # pragma: no cover
    _Connection = Any  # type: ignore[assignment,misc]

__all__ = ["requires"]

F = TypeVar("F", bound=Callable[..., Any])


def _missing_key(realm: str = "api") -> Denied:
    return Denied(401, "missing_key", "an API key is required: send "
                  "'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                  [bearer_challenge(realm)])


def _response(denied: Denied, request: Any) -> Any:
    """The refusal as the endpoint's response: a Django ``JsonResponse`` for a Django view, a
    Starlette response where Starlette is (so FastAPI endpoints may return it too), else the
    plain ASGI responder."""
    body = {"error": {"code": denied.code, "message": denied.message}}
    if type(request).__module__.startswith("django."):
        from django.http import JsonResponse as DjangoJson

        response = DjangoJson(body, status=denied.status)
        for name, value in denied.headers:
            response[name.decode("latin-1")] = value.decode("latin-1")
        return response
    try:
        from starlette.responses import JSONResponse
    except ImportError:  # pragma: no cover
        return denied
    return JSONResponse(body, status_code=denied.status,
                        headers={k.decode("latin-1"): v.decode("latin-1")
                                 for k, v in denied.headers})


class Requires:
    """What :func:`requires` returns: a decorator that is also a FastAPI dependency."""

    def __init__(self, scopes: tuple[str, ...]) -> None:
        for scope in scopes:
            if not valid_scope(scope):
                raise ValueError(f"requires(): {scope!r} is not an 'area:action' scope")
        self.scopes = frozenset(scopes)
        self._label = " ".join(sorted(self.scopes))

        async def dependency(request: _Connection) -> Identity:
            return self.check(request.scope)

        # FastAPI follows __wrapped__ to find the signature and awaits the call
        self.__wrapped__ = dependency

    def check(self, scope: Any) -> Identity:
        """The caller's identity if it holds every required scope; raises the refusal."""
        if "keyplane" not in scope:
            raise RuntimeError("requires() needs KeyplaneMiddleware in front of the app")
        identity: Identity | None = scope["keyplane"]
        if identity is None:  # an exempt path
            raise _missing_key()
        missing = self.scopes - identity["scopes"]
        if missing:
            raise Denied(403, "insufficient_scope",
                         "the key lacks the scope " + ", ".join(sorted(missing)),
                         [bearer_challenge("api", "insufficient_scope", self._label)])
        return identity

    @overload
    def __call__(self, endpoint: F, /) -> F: ...

    @overload
    def __call__(self, *, request: Any) -> Coroutine[Any, Any, Identity]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and set(kwargs) == {"request"}:  # FastAPI resolving the dependency
            return self.__wrapped__(kwargs["request"])
        if len(args) == 1 and not kwargs and callable(args[0]):
            return self._decorate(args[0])
        raise TypeError("use @requires(...) on an endpoint, or Depends(requires(...))")

    def _decorate(self, endpoint: F) -> F:
        params = list(inspect.signature(endpoint).parameters)
        name = next((p for p in params if p in ("request", "websocket")), None)
        if name is None:
            raise TypeError(f'@requires: {endpoint.__qualname__} has no "request" or '
                            '"websocket" argument')
        index = params.index(name)
        check = self.check

        def connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return kwargs[name] if name in kwargs else args[index]

        if inspect.iscoroutinefunction(endpoint):
            @functools.wraps(endpoint)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                conn = connection(args, kwargs)
                try:
                    check(conn.scope)
                except Denied as denied:
                    if conn.scope["type"] == "websocket":
                        await conn.close(code=1008, reason=denied.code)
                        return None
                    return _response(denied, conn)
                return await endpoint(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(endpoint)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            conn = connection(args, kwargs)
            try:
                check(conn.scope)
            except Denied as denied:
                return _response(denied, conn)
            return endpoint(*args, **kwargs)

        return sync_wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"requires({', '.join(repr(s) for s in sorted(self.scopes))})"


def requires(*scopes: str) -> Requires:
    """Require every one of ``scopes`` (``area:write`` implies ``area:read``)."""
    if not scopes:
        raise ValueError("requires() needs at least one scope")
    return Requires(scopes)
