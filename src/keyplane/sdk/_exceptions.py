"""Errors raised by the management client.

    KeyplaneError                  base of everything the SDK raises
    ├── APIConnectionError         Keyplane could not be reached (network error, timeout)
    └── APIError                   Keyplane answered with an error: status, code, message, field
        ├── AuthenticationError    401: the management key is missing, unknown or revoked
        ├── PermissionDenied       403: the key lacks the scope or the tenant is not its own
        ├── NotFound               404: no such object in the caller's tenant
        ├── ValidationError        400 / 422: bad input; ``field`` names the offending field
        ├── Conflict               409: the object's state does not allow the change
        └── RateLimited            429: ``retry_after`` says how many seconds to wait

Other statuses (5xx) raise :class:`APIError` itself. Messages never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "Conflict",
    "KeyplaneError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ValidationError",
]


class KeyplaneError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(KeyplaneError):
    """Keyplane could not be reached, or did not answer in time."""


class APIError(KeyplaneError):
    """Keyplane answered with an error status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
                f"message={self.message!r}, field={self.field!r})")


class AuthenticationError(APIError):
    """401: no credential, or one Keyplane does not accept."""


class PermissionDenied(APIError):
    """403: the credential is valid but may not do this."""


class NotFound(APIError):
    """404: no such object (or not visible to this credential)."""


class ValidationError(APIError):
    """400 / 422: the request is malformed; ``field`` names the offending field."""


class Conflict(APIError):
    """409: the change conflicts with the object's current state."""


class RateLimited(APIError):
    """429: too many requests; retry after ``retry_after`` seconds."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(status, code, message, field)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
}


def error_for(status: int, body: object, retry_after: str | None = None) -> APIError:
    """The exception for an error response (``body`` is the decoded JSON, if any)."""
    code, message, field = "http_error", f"HTTP {status}", None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        field = str(err["field"]) if err.get("field") else None
    cls = _BY_STATUS.get(status, APIError)
    if cls is RateLimited:
        seconds: float | None = None
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = None
        return RateLimited(status, code, message, field, retry_after=seconds)
    return cls(status, code, message, field)
