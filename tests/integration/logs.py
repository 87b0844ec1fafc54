"""Every log record a test's server writes, uvicorn's included (its loggers do not propagate)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG on the root logger, plus uvicorn's."""
    caplog.set_level(logging.DEBUG)
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).removeHandler(caplog.handler)
