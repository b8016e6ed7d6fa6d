"""The server's log lines: text for people (the default) or one JSON object per line (LOKAL_LOG_FORMAT=json)
for log shippers. Every line logged while a request is handled carries its request id."""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("lokal_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attributes that are not extra fields given by the caller.
_STANDARD_ATTRIBUTES = (frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
                        | {"message", "asctime", "color_message"})  # uvicorn's ANSI-coloured copy


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", …extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [{rid}]" if rid and record.name != "lokal.access" else line


def configure_logging(debug: bool, log_format: str) -> None:
    """One handler on the root logger, for lokal's and uvicorn's loggers alike (uvicorn is started with
    ``log_config=None`` and without its own access log: ``lokal.access`` writes one line per request)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
