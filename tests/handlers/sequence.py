"""A test handler for ordering: logs the start and the end of each run with its key and number.

Each run appends ``{"ev": "start"|"end", "key", "n", "id", "pid", "t"}`` lines to
``$IPCPOOL_TEST_RECORDS/seq-<pid>.jsonl`` (``t``: the system-wide monotonic clock, in ns, so lines of
different workers compare). The payload is ``{"key": k, "n": i}``, with ``"work": seconds`` to stay in
the handler a while (so two runs of one key would overlap if ordering broke), ``"raise": true`` to fail,
``"exit": true`` to kill its worker every time and ``"die_once": true`` on its first delivery only.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ipcpool import Message


def _log(event: str, message: Message) -> None:
    payload = message.payload if isinstance(message.payload, dict) else {}
    key = message.extra.get("orderingKey", payload.get("key", payload.get("chatJid")))
    line = json.dumps({"ev": event, "key": key, "n": payload.get("n"), "id": message.id, "pid": os.getpid(),
                       "t": time.monotonic_ns()})
    path = os.path.join(os.environ["IPCPOOL_TEST_RECORDS"], f"seq-{os.getpid()}.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def run(message: Message) -> Any:
    _log("start", message)
    payload = message.payload if isinstance(message.payload, dict) else {}
    if payload.get("work"):
        time.sleep(float(payload["work"]))
    if payload.get("exit") or (payload.get("die_once") and message.delivery_count == 1):
        os._exit(9)
    if payload.get("raise"):
        _log("end", message)
        raise RuntimeError("asked to fail")
    _log("end", message)
    return None

