"""A decoded Message back to its envelope, for round-trip checks (ipcpool itself never needs it)."""

from __future__ import annotations

from typing import Any

from ipcpool.message import Message


def to_wire(message: Message) -> dict[str, Any]:
    """The envelope with the original wire keys, unknown keys kept."""
    wire: dict[str, Any] = dict(message.extra)
    wire.update(
        id=message.id,
        type=message.type,
        groupFolder=message.group,
        payload=message.payload,
        timestamp=message.timestamp,
        requiresAck=message.requires_ack,
    )
    if message.reply_to is not None:
        wire["replyTo"] = message.reply_to
    return wire
