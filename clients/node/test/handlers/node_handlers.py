"""Handlers for the Node client's tests: record each delivery, fail on purpose, answer a request.

Every delivery appends one JSON line to ``$IPCPOOL_TEST_RECORDS/<pid>.jsonl`` with the message as
the handler saw it (the envelope a Node sender published, decoded by ipcpool), before doing
anything else, so a test can check what arrived.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ipcpool import Message


def _record(message: Message, handler: str) -> None:
    directory = os.environ.get("IPCPOOL_TEST_RECORDS")
    if not directory:
        return
    line = json.dumps({
        "id": message.id, "type": message.type, "group": message.group, "payload": message.payload,
        "timestamp": message.timestamp, "requires_ack": message.requires_ack, "reply_to": message.reply_to,
        "extra": message.extra, "legacy": message.legacy, "delivery": message.delivery_count,
        "handler": handler, "pid": os.getpid(), "at": time.time(),
    })
    fd = os.open(os.path.join(directory, f"{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record(message: Message) -> None:
    _record(message, "record")


def fail(message: Message) -> None:
    _record(message, "fail")
    why = message.payload.get("why", "failed on purpose") if isinstance(message.payload, dict) else "failed on purpose"
    raise RuntimeError(str(why))


def answer(message: Message) -> Any:
    _record(message, "answer")
    if isinstance(message.payload, dict) and "raise" in message.payload:
        raise ValueError(str(message.payload["raise"]))
    return {"echo": message.payload, "status": "completed"}
