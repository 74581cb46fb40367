"""Dead-letter records as operators see them, whatever the transport: an entry, a report, durations.

A record is the JSON that says why a message was quarantined: ``id``, ``type``,
``reason``, ``attempts``, ``exception`` (type, message, traceback), for poison
``deliveries`` (how each ended), ``originalName`` and ``inbox`` (the spool),
``time``. ``file`` names the entry in its transport: ``<epoch_ms>-<name>`` in
``errors/``, ``<epoch_ms>-<n>`` (a stream id) in Redis.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ipcpool.config import INBOXES
from ipcpool.message import Summary, now_iso

MESSAGES = "messages"
MAX_NACK_REASON = 8192  # characters of the reason a nack carries
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


def older_than(entries: list[ErrorEntry], seconds: float, now: float | None = None) -> list[ErrorEntry]:
    cutoff_ms = ((time.time() if now is None else now) - seconds) * 1000
    return [e for e in entries if e.epoch_ms < cutoff_ms]


def _plain_name(name: str) -> bool:
    """One directory entry of messages/: never a path (a forged record must not move files elsewhere)."""
    return (bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")
            and not name.startswith(".") and len(os.fsencode(name)) <= 255)


def nack_body(group: str, record: dict[str, Any], summary: Summary, outcome: str,
              data: bytes | None = None) -> dict[str, Any] | None:
    """The nack for a message that ends in errors/, when a sender may be waiting for it.

    Written when the message asked for an ack or a response, or when it could
    not even be decoded (its sender may be waiting under the file's name).
    ``timestamp`` is the envelope's own, so a sender can tell a nack of its
    message from an older one of the same id. Without one (the file did not
    decode), ``sha256`` of the bytes read, when there were any: a nack whose
    id comes only from a file name (anyone in the group may drop a file under
    another writer's id) answers only the sender of those very bytes.
    """
    if summary.id is None or not (summary.wants_answer or not summary.decoded):
        return None
    exception = record.get("exception")
    body = {"id": summary.id, "type": summary.type, "group": group, "outcome": outcome,
            "reason": str(record.get("reason", ""))[:MAX_NACK_REASON],
            "errorType": exception.get("type") if isinstance(exception, dict) else None,
            "timestamp": summary.timestamp, "time": now_iso()}
    if summary.timestamp is None and data is not None:
        body["sha256"] = hashlib.sha256(data).hexdigest()
    return body
