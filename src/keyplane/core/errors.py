"""Errors raised by the core and the services.

    KeyplaneError                  base; carries a stable ``code`` and an optional ``field``
    ├── ValidationError            bad input (400/422): names the field
    ├── AuthenticationError        no or unusable credential (401)
    ├── PermissionDenied           credential lacks the right (403)
    ├── NotFound                   no such object in the caller's tenant (404)
    ├── Conflict                   state does not allow the change (409)
    ├── PreconditionFailed         the object changed since the caller read it (412)
    ├── RateLimited                too many requests (429): carries ``retry_after``
    └── Unavailable                a dependency is missing or unreachable (503)

Adapters (HTTP, CLI) map these to status codes and exit codes; messages never contain secrets.
"""

from __future__ import annotations


class KeyplaneError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class ValidationError(KeyplaneError):
    code = "invalid_request"


class AuthenticationError(KeyplaneError):
    code = "unauthenticated"


class PermissionDenied(KeyplaneError):
    code = "forbidden"


class NotFound(KeyplaneError):
    code = "not_found"


class Conflict(KeyplaneError):
    code = "conflict"


class PreconditionFailed(KeyplaneError):
    code = "precondition_failed"


class RateLimited(KeyplaneError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, limit: int, remaining: int = 0,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after  # seconds until a request may be admitted again
        self.limit = limit  # the limit that was reached (0: a used-up usage quota)
        self.remaining = remaining


class Unavailable(KeyplaneError):
    code = "unavailable"
