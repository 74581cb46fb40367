"""Test handlers: record every delivery, and misbehave on request.

The payload drives the behaviour, so one handler serves every scenario:
``{"gate": path}`` (waits until the test creates ``path``: a handler held in flight for as long as the
test needs, with no guess at how long that is), ``{"sleep": s}``, ``{"wait_file": path}`` (the same, after any sleep),
``{"raise": "why"}``, ``{"exit": code}`` (os._exit), ``{"print": text}`` (to stdout, then stderr),
``{"segv": true}``, ``{"sysexit": code}``, ``{"hang": true}`` (sleeps forever), ``{"leak_mb": n}``
(keeps n MB per call), ``{"result": x}`` (returned to a requester), ``{"redis_probe": {"url": u, "key": k,
"out": path}}`` (writes to ``path`` whether Redis held ``k`` when the handler started).
Each delivery appends one JSON line to ``$IPCPOOL_TEST_RECORDS/<pid>.jsonl``
*before* misbehaving, so a test can count deliveries that killed a worker.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from typing import Any

from ipcpool import Message

_LEAK: list[bytes] = []
GATE_LIMIT = 300.0  # seconds a gated handler waits at most, so a failed test never leaves it blocked for ever


def _record(message: Message, handler: str) -> None:
    directory = os.environ.get("IPCPOOL_TEST_RECORDS")
    if not directory:
        return
    line = json.dumps({
        "id": message.id, "type": message.type, "group": message.group, "payload": message.payload,
        "delivery": message.delivery_count, "pid": os.getpid(), "legacy": message.legacy,
        "handler": handler, "at": time.time(), "extra": message.extra, "inbox": message.inbox,
    })
    fd = os.open(os.path.join(directory, f"{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _behave(payload: Any) -> Any:
    if not isinstance(payload, dict):
        return None
    if payload.get("redis_probe"):
        import redis

        probe = payload["redis_probe"]
        held = redis.Redis.from_url(probe["url"]).exists(probe["key"])
        with open(probe["out"], "w") as out:
            out.write("held" if held else "missing")
    if payload.get("print"):
        print(payload["print"])
        print(f"{payload['print']} (on stderr)", file=sys.stderr)
    if payload.get("gate"):
        _wait_for_gate(str(payload["gate"]))
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if payload.get("wait_file"):
        while not os.path.exists(payload["wait_file"]):
            time.sleep(0.01)
    if "exit" in payload:
        os._exit(int(payload["exit"]))
    if payload.get("segv"):
        ctypes.string_at(0)
    if payload.get("hang"):
        while True:
            time.sleep(3600)
    if payload.get("leak_mb"):
        chunk = bytearray(int(payload["leak_mb"]) * 1024 * 1024)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        _LEAK.append(bytes(chunk))
    if "sysexit" in payload:
        raise SystemExit(int(payload["sysexit"]))
    if payload.get("raise"):
        raise RuntimeError(str(payload["raise"]))
    return payload.get("result")


def _wait_for_gate(path: str) -> None:
    deadline = time.monotonic() + GATE_LIMIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {path} never opened")
        time.sleep(0.01)


def record(message: Message) -> Any:
    _record(message, "record")
    return _behave(message.payload)


def record_legacy(message: Message) -> Any:
    """The same as :func:`record` under another name, so a test can tell which [handlers] entry ran."""
    _record(message, "record_legacy")
    return _behave(message.payload)


async def record_async(message: Message) -> Any:
    _record(message, "record_async")
    return _behave(message.payload)


def fail_once(message: Message) -> Any:
    """Raises on a message's first attempt in each process, succeeds on the retry."""
    _record(message, "fail_once")
    key = f"_seen_{message.id}"
    if not globals().get(key):
        globals()[key] = True
        raise RuntimeError("first attempt fails")
    return "ok"
