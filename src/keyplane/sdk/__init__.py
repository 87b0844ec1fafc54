"""Keyplane's SDK: protect an ASGI app with API keys, and manage keys from code.

    from keyplane.sdk import KeyplaneMiddleware, requires
    app.add_middleware(KeyplaneMiddleware, url="http://127.0.0.1:8080", token=VERIFIER_KEY)

    @requires("contacts:write")            # or Depends(requires("contacts:write")) in FastAPI
    async def create_contact(request): ...

    from keyplane.sdk import Client
    with Client("http://127.0.0.1:8080", token=MANAGEMENT_KEY) as kp:
        kp.keys.create(name="zapier", scopes=["contacts:read"])

The SDK depends on httpx2 only (Django only for Django views); it imports nothing else of
Keyplane and installs on its own, as the ``keyplane-sdk`` distribution (``packages/keyplane-sdk``).
"""

from keyplane.sdk._client import NOT_GIVEN, AsyncClient, Client
from keyplane.sdk._exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    Conflict,
    KeyplaneError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from keyplane.sdk._middleware import KeyplaneMiddleware
from keyplane.sdk._requires import requires

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Conflict",
    "KeyplaneError",
    "KeyplaneMiddleware",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ValidationError",
    "requires",
]
