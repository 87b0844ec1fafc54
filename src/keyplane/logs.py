"""Logging set-up: one line per event, never a secret.

Routes log ids, not keys; and a secret a client pasted where it does not belong (a URL path, a
field that ends up in an exception) is redacted from every log record by
:func:`install_redaction`: the message, the arguments a formatter may use on their own
(uvicorn's access log does), the traceback and the stack.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Mapping
from typing import Any

from keyplane.core.tokens import redact_secrets


def configure_logging(level: str = "info") -> None:
    install_redaction()
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


class RedactingLogRecord(logging.LogRecord):
    """A record whose message never holds a credential-shaped string."""

    def getMessage(self) -> str:
        return redact_secrets(super().getMessage())


_PLAIN = (str, int, float, type(None))  # arguments whose text is known (str redacted)


def _redact_arg(value: Any) -> Any:
    return redact_secrets(value) if isinstance(value, str) else value


_made_by: Any = None  # the record factory in place before ours


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _made_by(*args, **kwargs)
    if type(record) is logging.LogRecord:
        record.__class__ = RedactingLogRecord
    if isinstance(record.msg, str):
        record.msg = redact_secrets(record.msg)
    given = record.args
    values: Any = given.values() if isinstance(given, Mapping) else given or ()
    if not all(isinstance(v, _PLAIN) for v in values):
        # an object's text is only known once formatted: format now, keep only the text
        with contextlib.suppress(Exception):  # a bad format: logging reports it when emitted
            record.msg, record.args = record.getMessage(), ()
    elif isinstance(given, tuple):
        record.args = tuple(_redact_arg(a) for a in given)
    elif isinstance(given, Mapping):
        record.args = {k: _redact_arg(v) for k, v in given.items()}
    if record.exc_info and record.exc_info[0] is not None:
        # formatters use exc_text when it is set: the traceback as it will be written
        # (the exception object itself is dropped: its repr would hold what was redacted)
        record.exc_text = redact_secrets(
            "".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        record.exc_info = None
    if record.stack_info:
        record.stack_info = redact_secrets(record.stack_info)
    return record


def install_redaction() -> None:
    """Every log record made in this process from now on is redacted (idempotent)."""
    global _made_by
    current = logging.getLogRecordFactory()
    if current is not _redacting_factory:
        _made_by = current
        logging.setLogRecordFactory(_redacting_factory)
