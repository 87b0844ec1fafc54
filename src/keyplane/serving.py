"""How ``keyplane serve`` runs the HTTP API: the server, its limits and its workers.

Beside :mod:`keyplane.bootstrap` (which builds the parts), this is the other half of the
composition root: the CLI starts the server through it and so never imports the web adapter.
Each worker process builds its own Keyplane in ``keyplane.web.asgi:app_factory``.
"""

from __future__ import annotations

import os
from typing import Any

from keyplane.config import Settings

APP_FACTORY = "keyplane.web.asgi:app_factory"


def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Runs uvicorn until it is stopped. ``host`` and ``port`` reach the worker processes
    (which read their settings from the environment) as ``KEYPLANE_HOST``/``KEYPLANE_PORT``."""
    import uvicorn
    import uvicorn.config

    from keyplane.web.limits import MAX_HEAD_BYTES

    os.environ["KEYPLANE_HOST"], os.environ["KEYPLANE_PORT"] = host, str(port)
    # with JSON logs, uvicorn's loggers keep writing through ours (every line is JSON)
    log_config: Any = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port,
                workers=workers, access_log=False, log_level=settings.log_level,
                log_config=log_config,
                proxy_headers=False, server_header=False, http=_http_protocol(),
                h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_keep_alive=5)


def _http_protocol() -> Any:
    """httptools with a bound on the request head (it has none of its own); h11 (which stops
    at ``h11_max_incomplete_event_size``) where httptools is not installed."""
    try:
        from keyplane.web.server import BoundedHttpToolsProtocol
    except ImportError:
        return "h11"
    return BoundedHttpToolsProtocol
