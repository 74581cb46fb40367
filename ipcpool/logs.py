"""Logging set-up shared by the CLI, the supervisor and the workers.

``LOG_LEVEL`` (debug, info, warning, error; default info) is honoured in every
process. One line per event, in one of two formats (``[log] format``):

- ``text``: time, level, process id, logger, message;
- ``json``: one JSON object a line for log shippers: ``time``, ``level``,
  ``logger``, ``pid``, ``message``, and where the event is about a message,
  its ``id``, ``group`` and ``type`` (read off the ``key=value`` words every
  per-message line carries), with ``outcome`` and ``duration_ms`` where known.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime

from ipcpool.terminal import printable

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
MULTILINE = {"multiline": True}  # extra= for a line whose message is lines of our own (a traceback)
FORMATS = ("text", "json")
_KEYS = re.compile(r"\b(id|group|type|file)=([^\s,;:]+)")
_EXTRAS = ("outcome", "duration_ms")


def level_from_env() -> int:
    name = os.environ.get("LOG_LEVEL", "info").upper()
    if name == "WARN":
        name = "WARNING"
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never raises on what a message contains."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": message,
        }
        for key, value in _KEYS.findall(message):
            line.setdefault(key, value)
        for key in _EXTRAS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """One readable line per event: what a message's writer chose is escaped, never interpreted."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not getattr(record, "multiline", False):
            record.message = printable(record.message)
        return super().formatMessage(record)


def setup_logging(fmt: str = "text") -> None:
    """Configure the root logger (idempotent; a second call changes only the format)."""
    root = logging.getLogger()
    root.setLevel(level_from_env())
    handler = next((h for h in root.handlers if getattr(h, "_ipcpool", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._ipcpool = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(FORMAT))
