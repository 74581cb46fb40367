"""Logging set-up shared by the CLI, the supervisor and the workers.

``LOG_LEVEL`` (debug, info, warning, error; default info) is honoured in every
process. One line per event: time, level, process id, logger, message.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def level_from_env() -> int:
    name = os.environ.get("LOG_LEVEL", "info").upper()
    if name == "WARN":
        name = "WARNING"
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def setup_logging() -> None:
    """Configure the root logger once per process (idempotent)."""
    root = logging.getLogger()
    level = level_from_env()
    root.setLevel(level)
    if not any(getattr(h, "_ipcpool", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._ipcpool = True  # type: ignore[attr-defined]
        root.addHandler(handler)
