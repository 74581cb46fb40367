"""Acks, nacks and responses: the answers senders wait for, and the dedupe ledger.

``acks/<id>.ack`` (an ISO-8601 time) is written after a handler succeeded and
is the ledger that keeps an id from being handled twice; ``acks/<id>.nack``
(JSON: why) says the message ended in errors/; ``<replyTo>/responses/<id>.json``
is a request's answer.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ipcpool.message import now_iso
from ipcpool.transport.spool.layout import ACKS, RESPONSES, Folders, ack_name, nack_name, safe_id
from ipcpool.transport.spool.writes import Writer

_EFFECTIVE_IDS = os.access in os.supports_effective_ids


class Ledger:
    """Acks, nacks and responses of one spool root."""

    def __init__(self, folders: Folders, writer: Writer) -> None:
        self.path = folders.path
        self.write_atomic = writer.write_atomic

    def has_ack(self, group: str, message_id: str) -> bool:
        return self.has_ack_named(group, ack_name(message_id))

    def has_ack_named(self, group: str, name: str) -> bool:
        """``name`` from :func:`ack_name`: a worker checks, then writes, the same ack."""
        # No exception object when absent; effective ids, as open() would use.
        return os.access(self.path(group, ACKS, name), os.F_OK, effective_ids=_EFFECTIVE_IDS)

    def write_ack(self, group: str, message_id: str) -> None:
        self.write_ack_named(group, ack_name(message_id))

    def write_ack_named(self, group: str, name: str) -> None:
        self.write_atomic(group, ACKS, name, now_iso().encode())

    def response_path(self, group: str, request_id: str) -> str:
        return self.path(group, RESPONSES, f"{safe_id(request_id)}.json")

    def write_response(self, group: str, request_id: str, data: bytes) -> None:
        self.write_atomic(group, RESPONSES, f"{safe_id(request_id)}.json", data)

    def write_nack(self, group: str, body: dict[str, Any]) -> str:
        """``acks/<id>.nack``: the message ended in errors/, and why (JSON), for a waiting sender.

        Kept, and pruned, as acks are; never counted as an ack (a nacked
        message may be retried from errors/ and handled).
        """
        return self.write_atomic(group, ACKS, nack_name(body["id"]),
                                 json.dumps(body, separators=(",", ":"), default=str).encode())
