"""Dead-letter records as operators see them, whatever the transport: an entry, a report, durations.

A record is the JSON that says why a message was quarantined: ``id``, ``type``,
``reason``, ``attempts``, ``exception`` (type, message, traceback), for poison
``deliveries`` (how each ended), ``originalName`` and ``inbox`` (the spool),
``time``. ``file`` names the entry in its transport: ``<epoch_ms>-<name>`` in
``errors/``, ``<epoch_ms>-<n>`` (a stream id) in Redis.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ipcpool.config import INBOXES
from ipcpool.ops.terminal import printable

MESSAGES = "messages"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``24h``, ``7d`` to seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, like 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class ErrorEntry:
    group: str
    file: str  # <epoch_ms>-<name> in errors/
    record: dict[str, Any]

    @property
    def epoch_ms(self) -> int:
        head = self.file.split("-", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def original_name(self) -> str:
        """The name to retry under: the record's, if it is a plain file name; else the errors/ file's own."""
        recorded = self.record.get("originalName")
        if isinstance(recorded, str) and _plain_name(recorded):
            return recorded
        name = self.file.split("-", 1)[-1]
        return name.split("~", 1)[1] if self.inbox != MESSAGES and "~" in name else name

    @property
    def inbox(self) -> str:
        """The inbox it came from and goes back to (messages/, unless its record names another we know)."""
        recorded = self.record.get("inbox")
        return recorded if isinstance(recorded, str) and recorded in INBOXES else MESSAGES

    @property
    def message_id(self) -> str:
        return str(self.record.get("id") or self.original_name.rsplit(".", 1)[0])

    def summary(self) -> dict[str, Any]:
        return {
            "time": self.record.get("time"),
            "group": self.group,
            "id": self.message_id,
            "type": self.record.get("type"),
            "reason": self.record.get("reason"),
            "attempts": self.record.get("attempts"),
            "file": self.file,
        }


def render(entry: ErrorEntry, message: str | None) -> str:
    """One record as an operator reads it: fields, each delivery, the traceback as text, the message.

    Writers chose much of it (the type, the id, the body, what a handler raised): every value goes
    through :func:`~ipcpool.ops.terminal.printable`, a newline kept only inside the traceback and the message.
    """
    record = entry.record
    lines = [f"{entry.group}/errors/{printable(entry.file)}"]
    fields = [("id", entry.message_id), ("type", record.get("type") or "-"), ("time", record.get("time")),
              ("reason", record.get("reason")), ("attempts", record.get("attempts")),
              ("deliveries", record.get("deliveries") if not isinstance(record.get("deliveries"), list)
               else len(record["deliveries"])),
              ("worker pid", record.get("workerPid")),
              ("entry", record.get("originalEntry"))]  # Redis: the stream entry a nack's errorFile names
    if entry.inbox != MESSAGES:
        fields.insert(2, ("inbox", entry.inbox))
    lines += [f"  {name:<11} {printable(value)}" for name, value in fields if value is not None]
    history = record.get("deliveries")
    if isinstance(history, list):
        lines.append("  deliveries that killed or hung a worker:")
        lines += [printable(f"    {d.get('delivery')}. pid {d.get('workerPid')}: {d.get('ended')} ({d.get('time')})")
                  for d in history if isinstance(d, dict)]
    exception = record.get("exception")
    if isinstance(exception, dict) and exception.get("traceback"):
        lines.append("  traceback:")
        lines += [f"    {line}" for line in _block(str(exception["traceback"]).rstrip("\n"))]
    lines.append("  message:" if message is not None else "  message: (not in errors/ any more)")
    if message is not None:
        lines += [f"    {line}" for line in _block(_pretty(message))]
    return "\n".join(lines)


def _block(text: str) -> list[str]:
    """Lines of a writer's text, escaped first: a carriage return or a form feed is shown, never a line break."""
    return printable(text, newlines=True).split("\n")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def older_than(entries: list[ErrorEntry], seconds: float, now: float | None = None) -> list[ErrorEntry]:
    cutoff_ms = ((time.time() if now is None else now) - seconds) * 1000
    return [e for e in entries if e.epoch_ms < cutoff_ms]


def _plain_name(name: str) -> bool:
    """One directory entry of messages/: never a path (a forged record must not move files elsewhere)."""
    return (bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")
            and not name.startswith(".") and len(os.fsencode(name)) <= 255)
