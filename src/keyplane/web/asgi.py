"""Entry point for ASGI servers: ``uvicorn --factory keyplane.web.asgi:app_factory``."""

from __future__ import annotations

from fastapi import FastAPI

from keyplane.bootstrap import build
from keyplane.config import Settings
from keyplane.logs import configure_logging
from keyplane.web import server
from keyplane.web.app import create_app


def app_factory() -> FastAPI:
    """Builds settings from the environment; each worker process calls this once."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    server.configure(settings.request_head_timeout_seconds)
    return create_app(build(settings))
