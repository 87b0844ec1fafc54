"""Logging set-up: one line per event, never a secret.

Two formats (``KEYPLANE_LOG_FORMAT``): ``json`` (the default: one JSON object per line with
``time``, ``level``, ``logger``, ``message`` and ``request_id``; the access log adds
``method``, ``path``, ``status``, ``duration_ms`` and ``client``) and ``text`` (one readable
line). ``KEYPLANE_ACCESS_LOG=false`` silences the access log alone.

Routes log ids, not keys; and a secret a client pasted where it does not belong (a URL path, a
field that ends up in an exception) is redacted from every log record by
:func:`install_redaction`: the message, the arguments a formatter may use on their own
(uvicorn's access log does), the traceback and the stack.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import threading
import time
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from keyplane.core.tokens import redact_secrets

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# the access log's message; its arguments: client, method, path, status, milliseconds, request id
ACCESS_FORMAT = '%s "%s %s" %d %.1fms request_id=%s'
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

request_id_var: ContextVar[str | None] = ContextVar("keyplane_request_id", default=None)
"""The id of the request being served (set by the request middleware): JSON lines carry it."""


def configure_logging(level: str = "info", log_format: str = "text",
                      access_log: bool = True) -> None:
    """Root handler on stderr in the chosen format (unless one is installed already), the
    level, and the access log on or off. In ``json``, uvicorn's own loggers write through the
    same handler, so that every line of the process is JSON."""
    install_redaction()
    root = logging.getLogger()
    ours: logging.StreamHandler[Any] | None = None
    if not root.handlers:
        ours = logging.StreamHandler()
        ours.setFormatter(JsonFormatter() if log_format == "json"
                          else logging.Formatter(TEXT_FORMAT))
        root.addHandler(ours)
        root.setLevel(level.upper())
        if log_format == "json":
            for name in UVICORN_LOGGERS:
                found = logging.getLogger(name)
                found.handlers.clear()
                found.propagate = True
    access = logging.getLogger("keyplane.access")
    access.setLevel(logging.NOTSET if access_log else logging.WARNING)
    # the fast writer only through a handler made here (a served process: ``keyplane serve``
    # configures it, then the app factory again in the same process); anywhere else (tests
    # capturing records, an embedding application) the access log stays a logger
    global access_writer
    wanted = access.isEnabledFor(logging.INFO) and not access.handlers
    if access_writer is not None and (not wanted or ours is not None
                                      or access_writer.handler not in root.handlers):
        access_writer.close()
        access_writer = None
    if wanted and ours is not None:
        access_writer = AccessWriter(ours, json_lines=log_format == "json")


class AccessWriter:
    """The access log, written without the logging machinery (a record, its caller lookup,
    the redaction factory, a format and a flush per request cost verify a fifth of its
    throughput): each line is made with one f-string and buffered, then written through the
    root handler's stream under its lock (so lines never interleave) every
    ``FLUSH_SECONDS`` or ``FLUSH_LINES`` lines, and at exit. A crash loses at most the last
    ``FLUSH_SECONDS`` of access lines. The path is redacted by the caller; JSON escapes what
    needs escaping."""

    FLUSH_SECONDS = 0.5
    FLUSH_LINES = 256

    def __init__(self, handler: logging.StreamHandler[Any], *, json_lines: bool) -> None:
        self.handler = handler
        self.json_lines = json_lines
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyplane-access-log",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def write(self, client: str, method: Any, path: str, status: int, elapsed: float,
              request_id: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(
                "%Y-%m-%dT%H:%M:%S" if self.json_lines else "%Y-%m-%d %H:%M:%S",
                time.gmtime(second) if self.json_lines else time.localtime(second))
        ms = int((now - second) * 1000)
        method = str(method)
        if self.json_lines:
            if '"' in path or "\\" in path or '"' in method or "\\" in method:
                method, path = json.dumps(method)[1:-1], json.dumps(path)[1:-1]
            line = (f'{{"time": "{self._stamp}.{ms:03d}Z", "level": "info", "logger": '
                    f'"keyplane.access", "message": "{method} {path} {status}", "request_id": '
                    f'"{request_id}", "method": "{method}", "path": "{path}", "status": '
                    f'{status}, "duration_ms": {elapsed * 1000:.2f}, "client": "{client}"}}')
        else:
            line = (f'{self._stamp},{ms:03d} INFO keyplane.access {client} "{method} {path}" '
                    f"{status} {elapsed * 1000:.1f}ms request_id={request_id}")
        lines = self.lines
        lines.append(line)
        if len(lines) >= self.FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if not lines:
            return
        handler = self.handler
        lock = handler.lock if handler.lock is not None else contextlib.nullcontext()
        with lock, contextlib.suppress(Exception):  # a closed stream: nothing to do
            handler.stream.write("\n".join(lines) + "\n")
            handler.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_SECONDS):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        atexit.unregister(self.flush)


access_writer: AccessWriter | None = None
"""Installed by :func:`configure_logging` when the access log is on (served processes); the
access log goes through ``logging`` otherwise (tests capture those records)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Every field comes from the record after redaction (the
    message, the arguments, the traceback: see :func:`install_redaction`); control characters
    are escaped by JSON, so no field can forge a line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        args = record.args
        if record.msg == ACCESS_FORMAT and type(args) is tuple and len(args) == 6:
            client, method, path, status, ms, request_id = args
            out["message"] = f"{method} {path} {status}"
            out["request_id"] = request_id
            out.update(method=method, path=path, status=status,
                       duration_ms=round(ms, 2) if isinstance(ms, float) else ms,
                       client=client)
        else:
            out["message"] = record.getMessage()
            out["request_id"] = request_id_var.get()
        if record.exc_text:
            out["exc_info"] = record.exc_text
        elif record.exc_info and record.exc_info[0] is not None:  # a record made elsewhere
            out["exc_info"] = redact_secrets(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack_info"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


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
