"""Example handlers named by configs/prod.toml and configs/dev.toml (``ipcpool.examples:handle_task``).

They ship inside the package so the shipped configs run wherever ipcpool is
installed (a clone, a wheel, the Docker image, the systemd unit); a real
deployment names its own module in ``[handlers]``.

A handler takes one :class:`ipcpool.Message` and may be ``def`` or
``async def``. What it returns becomes the response's ``result`` when the
sender asked for one (``replyTo``); raising makes the worker retry per
``[retry]`` and then move the message to ``errors/`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ipcpool import Message

log = logging.getLogger("ipcpool.examples")


def handle_task(message: Message) -> dict[str, Any]:
    """A task: log it and report what was done."""
    payload = message.payload if isinstance(message.payload, dict) else {"value": message.payload}
    log.info("task id=%s group=%s taskId=%s", message.id, message.group, payload.get("taskId"))
    return {"status": "completed", "taskId": payload.get("taskId")}


async def handle_command(message: Message) -> dict[str, Any]:
    """A command, as an async handler: the worker runs it to completion."""
    payload = message.payload if isinstance(message.payload, dict) else {}
    await asyncio.sleep(0)
    command = payload.get("command")
    if command == "fail":
        raise RuntimeError(f"command {command!r} failed on purpose")
    log.info("command id=%s group=%s command=%s args=%s", message.id, message.group, command, payload.get("args"))
    return {"command": command, "ok": True}


def handle_legacy(message: Message) -> None:
    """A plain JSON file from an old writer: the whole body is the payload."""
    log.info("legacy message file=%s group=%s payload=%r", message.id, message.group, message.payload)


def handle_task_command(message: Message) -> dict[str, Any]:
    """A task command the original system's agents write into tasks/: plain JSON whose own "type"
    (schedule_task, pause_task, ...) chose this handler; the whole body is the payload."""
    body = message.payload if isinstance(message.payload, dict) else {}
    log.info("task command %s id=%s group=%s inbox=%s taskId=%s", message.type, message.id, message.group,
             message.inbox, body.get("taskId"))
    return {"command": message.type, "taskId": body.get("taskId"), "accepted": True}


def handle_error(message: Message) -> None:
    """An ``error`` message another process reported."""
    payload = message.payload if isinstance(message.payload, dict) else {}
    log.error("IPC error reported id=%s group=%s: %s", message.id, message.group, payload.get("error"))


def handle_any(message: Message) -> None:
    """Fallback for custom types without a handler of their own."""
    log.info("message of custom type %s id=%s group=%s", message.type, message.id, message.group)
