"""Logging set-up: one line per record, as ``key=value`` text or as JSON, with the
``extra=`` fields and the current call's request id attached."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
_LIBRARY_LOGGERS = ("grpc", "asyncio", "asyncpg")

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}

#: The request id of the RPC being handled (set by the call interceptor); every
#: record logged while handling that call carries it.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (empty outside a call) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _text(value: Any) -> str:
    """A value as it reads in ``key=value``: quoted when empty or when it holds
    spaces, quotes or ``=``."""
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        request_id = getattr(record, "request_id", "")
        if request_id:
            extras["request_id"] = request_id
        pairs = " ".join(f"{k}={_text(v)}" for k, v in extras.items())
        return f"{line} {pairs}" if pairs else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extras,
    request_id when inside a call, and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            entry["request_id"] = request_id
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class FieldsFilter(logging.Filter):
    """Adds the same fields to every record (a worker process's ``worker`` index)."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


def configure_logging(
    level: str, log_format: LogFormat = "text", *, fields: Mapping[str, Any] | None = None
) -> None:
    """Send every record to stderr, one line each, in the chosen format, with
    ``fields`` on every line."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RequestIdFilter())
    if fields:
        handler.addFilter(FieldsFilter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # DEBUG is for this service's per-call lines, not the libraries' internals.
    for noisy in _LIBRARY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
