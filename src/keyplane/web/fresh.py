"""A fresh second factor before a sensitive step (consenting to a connected app, creating a
key with admin rights): the sessions service decides whether the session proved it recently
enough; otherwise the form's ``second_factor_code`` is checked here and recorded."""

from __future__ import annotations

from typing import Any

from keyplane.core.errors import AuthenticationError, RateLimited
from keyplane.oauth.wiring import ConnectedApps
from keyplane.services.sessions import SignedIn

FIELD = "second_factor_code"
ASK = ("Enter the current code from your authenticator app: this step needs a fresh second "
       "factor.")


def needs_code(env: ConnectedApps, signed_in: SignedIn) -> bool:
    return not env.sessions.fresh(signed_in)


def refused(env: ConnectedApps, signed_in: SignedIn, code: Any) -> str:
    """'' when the step may go ahead; otherwise the plain words to show beside the field."""
    if env.sessions.fresh(signed_in):
        return ""
    if not isinstance(code, str) or not code.strip():
        return ASK
    try:
        env.sessions.prove(signed_in, code)
    except RateLimited:
        return "Too many wrong codes. Wait a few minutes and try again."
    except AuthenticationError:
        return "That code is not right. Enter the current 6-digit code from your app."
    return ""
