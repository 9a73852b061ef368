"""Logs: readable and coloured on a terminal, one JSON object per line otherwise.

Every JSON line has the fields the gateway writes too (gateway/src/logging.ts): `time` (ISO 8601
UTC, milliseconds), `level` (DEBUG, INFO, WARNING, ERROR, CRITICAL), `logger`, `message`,
`request_id`, then the record's own extra fields.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from rich.logging import RichHandler

from capstan.observability.context import current_request_id
from capstan.observability.redaction import RedactSecrets

# Libraries whose INFO/DEBUG lines carry secrets: httpx logs every request's full URL (webhook
# URLs hold credentials and tokens), aiosqlite every statement with its parameters (signing
# secrets, key hashes). Quiet at any CAPSTAN_LOG_LEVEL; the redaction filter is the backstop.
QUIET = ("httpx", "httpcore", "aiosqlite", "asyncpg")

# Attributes every LogRecord has; anything else on a record is an `extra` field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}
# uvicorn adds `color_message` (the message with ANSI colours) to its records: never logged.
_DROPPED = {"color_message"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        for name in _DROPPED:
            record.__dict__.pop(name, None)
        return True


def iso_time(created: float) -> str:
    """`2026-12-05T13:04:05.123Z`: the gateway's format (JavaScript's toISOString)."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        message = log_data.get("message")
        if isinstance(message, str):  # a library may colour its own text
            log_data["message"] = _ANSI.sub("", message)
        return log_data


class _Readable(logging.Formatter):
    """`logger: message key=value ...` for RichHandler, which adds time and level."""

    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        if record.__dict__.get("request_id"):
            extras = {"request_id": record.__dict__["request_id"], **extras}
        text = f"{record.name}: {record.getMessage()}"
        if extras:
            text += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def use_json(setting: bool | None) -> bool:
    """CAPSTAN_LOG_JSON when set; otherwise JSON unless stderr is a terminal."""
    return setting if setting is not None else not sys.stderr.isatty()


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route every logger (uvicorn's too) through one handler on stderr: JSON lines, or
    coloured readable lines on a terminal (`json=None` picks by whether stderr is one)."""
    handler: logging.Handler
    if use_json(json):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _Json(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler = RichHandler(
            console=Console(stderr=True),
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="%H:%M:%S",
        )
        handler.setFormatter(_Readable())
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware logs each request with its id; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
