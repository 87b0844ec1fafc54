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


_PLAIN = frozenset({str, int, float, bool, type(None)})  # their text is known (str redacted)
_made_by: Any = None  # the record factory in place before ours


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Makes the record as before, then takes every credential-shaped string out of it, once:
    formatters then have nothing left to leak, whichever fields they use."""
    record: logging.LogRecord = _made_by(*args, **kwargs)
    given = record.args
    if given:
        plain = _redacted_args(given)
        if plain is not None:
            record.args = plain
        else:
            # an object's text is only known once formatted: format now, keep only the text
            with contextlib.suppress(Exception):  # a bad format: logging reports it on emit
                record.msg, record.args = record.getMessage(), ()
    if isinstance(record.msg, str):
        record.msg = redact_secrets(record.msg)
    if record.exc_info and record.exc_info[0] is not None:
        # formatters use exc_text when it is set: the traceback as it will be written
        # (the exception object itself is dropped: its repr would hold what was redacted)
        record.exc_text = redact_secrets(
            "".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        record.exc_info = None
    if record.stack_info:
        record.stack_info = redact_secrets(record.stack_info)
    return record


def _redacted_args(given: Any) -> Any:
    """The arguments with their strings redacted; ``None`` if one is not a plain value."""
    if type(given) is tuple:
        out = []
        for value in given:
            kind = type(value)
            if kind is str:
                value = redact_secrets(value)
            elif kind not in _PLAIN:
                return None
            out.append(value)
        return tuple(out)
    if isinstance(given, Mapping):
        if not all(type(v) in _PLAIN for v in given.values()):
            return None
        return {k: redact_secrets(v) if type(v) is str else v for k, v in given.items()}
    return None


def install_redaction() -> None:
    """Every log record made in this process from now on is redacted (idempotent)."""
    global _made_by
    current = logging.getLogRecordFactory()
    if current is not _redacting_factory:
        _made_by = current
        logging.setLogRecordFactory(_redacting_factory)
