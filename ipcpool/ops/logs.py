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

import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ipcpool.ops.terminal import printable

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
MAX_OUTPUT_LINE = 8192  # characters of handler output kept waiting for its newline before it is logged anyway
_handler_log = logging.getLogger("ipcpool.handler")
_emitting = threading.local()  # this thread is logging a line of handler output now
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


class HandlerOutput(io.TextIOBase):
    """A worker's ``sys.stdout`` / ``sys.stderr``: each line a handler prints becomes one log line, marked as
    handler output and with the message it was running, instead of landing unmarked in the supervisor's
    output (and breaking JSON logs)."""

    def __init__(self, stream: Any, level: int, running: Callable[[], dict[str, Any] | None]) -> None:
        super().__init__()
        self._stream = stream  # the real one: its descriptor, for code that asks for it
        self._level = level
        self._running = running
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._stream.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            lines = self._buffer.split("\n")
            self._buffer = lines.pop()
            if len(self._buffer) > MAX_OUTPUT_LINE:
                lines.append(self._buffer)
                self._buffer = ""
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._emit(rest)

    def _emit(self, line: str) -> None:
        if getattr(_emitting, "on", False):  # a log handler that writes to this very stream: no loop
            self._stream.write(line + "\n")
            return
        _emitting.on = True
        try:
            about = self._running()
            if about:
                _handler_log.log(self._level, "handler output id=%s group=%s type=%s: %s", about.get("id"),
                                 about.get("group"), about.get("type"), line)
            else:
                _handler_log.log(self._level, "handler output: %s", line)
        finally:
            _emitting.on = False


def capture_handler_output(running: Callable[[], dict[str, Any] | None]) -> None:
    """In a worker: what handlers print goes through logging (see :class:`HandlerOutput`)."""
    sys.stdout = HandlerOutput(sys.stdout, logging.INFO, running)
    sys.stderr = HandlerOutput(sys.stderr, logging.WARNING, running)


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
