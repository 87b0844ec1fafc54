"""Fixtures shared by the integration suites (the root conftest holds the storage-backed ones)."""

from tests.integration.browser import chromium  # noqa: F401  (Debian's Chromium, for browser tests)
from tests.integration.logs import all_logs  # noqa: F401  (every log record, uvicorn's too)
