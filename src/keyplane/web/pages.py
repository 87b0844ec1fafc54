"""Server-rendered pages (sign-in, consent): templates, cookies, CSRF and security headers.

Cookies are ``HttpOnly`` and ``SameSite=Lax``; over TLS they are also ``Secure`` and carry the
``__Host-`` prefix (bound to this host, path ``/``). Pages forbid framing (clickjacking on the
consent page) and send no referrer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from keyplane.bootstrap import Keyplane
from keyplane.services.sessions import SignedIn, new_binding
from keyplane.web import net

TEMPLATES = Path(__file__).resolve().parent.parent / "admin" / "templates"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def html(template: str, context: dict[str, Any]) -> str:
    """A template of ``admin/templates`` rendered (autoescaped)."""
    return _env().get_template(template).render(**context)


def keyplane_of(request: Request) -> Keyplane:
    kp: Keyplane = request.app.state.keyplane
    return kp


def env_of(request: Request) -> Keyplane:
    """The same container as :func:`keyplane_of`; the routes that read its connected-app
    fields (sessions, accounts, links, two_factor, ...) name it so."""
    return keyplane_of(request)


def is_tls(request: Request) -> bool:
    return net.is_tls(request, request.app.state.trusted_proxies)


def client_ip(request: Request) -> str | None:
    addr = net.client_address(request, request.app.state.trusted_proxies)
    return str(addr) if addr is not None else None


def session_cookie(request: Request) -> str:
    return "__Host-kp_session" if is_tls(request) else "kp_session"


def csrf_cookie(request: Request) -> str:
    return "__Host-kp_csrf" if is_tls(request) else "kp_csrf"


def current_session(request: Request) -> tuple[str | None, SignedIn | None]:
    raw = request.cookies.get(session_cookie(request))
    return raw, env_of(request).sessions.resolve(raw) if raw else None


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=is_tls(request),
                        httponly=True, samesite="lax")


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=is_tls(request), httponly=True,
                           samesite="lax")


def render(request: Request, template: str, context: dict[str, Any], *, status: int = 200,
           form_targets: tuple[str, ...] = ()) -> HTMLResponse:
    html = _env().get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status)
    targets = " ".join(("'self'", *form_targets))
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def csrf_binding(request: Request, signed_in: SignedIn | None, raw_session: str | None,
                 response_cookies: list[tuple[str, str]]) -> str:
    """What the page's CSRF token is bound to: the session cookie when signed in, otherwise a
    pre-session cookie (set on the response if the browser has none yet)."""
    if signed_in is not None and raw_session:
        return raw_session
    existing = request.cookies.get(csrf_cookie(request))
    if existing and 16 <= len(existing) <= 64:
        return existing
    value = new_binding()
    response_cookies.append((csrf_cookie(request), value))
    return value


def origin(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


def safe_next(value: Any, default: str = "/signin") -> str:
    """A same-site path to go to after signing in; anything else becomes ``default``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 33 for c in value) or len(value) > 4000:
        return default
    return value
