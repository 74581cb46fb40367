"""A worker's side on Redis: read an entry, check the ack ledger, complete, reply, dead-letter.

A receipt's ``ref`` is the entry's id in its group's stream. A batch of
receipts is fetched in one pipelined round trip (``prefetch``); completing is
one script call. Nothing read from Redis is ever unpickled: an entry is a few
byte strings, and one that is malformed (no body, an unknown format) or too
large is quarantined with the reason like any invalid message.
"""

from __future__ import annotations

import json
from typing import Any

from ipcpool.config import Config
from ipcpool.config import ack_retry_window as _window
from ipcpool.errors import InvalidMessage
from ipcpool.message import FORMATS, SNIFF_BYTES, now_iso
from ipcpool.transport import Raw, Receipt
from ipcpool.transport.redis.connection import UNAVAILABLE, connect, unavailable
from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, complete, quarantine

_MISSING = object()


class RedisStore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = connect(config)
        self.keys = Keys(config.redis.prefix)
        self.scripts = Scripts(self.client)
        self.max_bytes = config.spool.max_message_bytes
        self.retention = max(1, int(config.ack.retention))
        self.answer_ttl = max(60, int(_window(config.ack)) + 60)  # a sender may wait this long for an answer
        self.response_ttl = max(1, int(config.spool.response_retention))
        self._cache: dict[tuple[str, str], Any] = {}  # (group, entry) -> its fields, fetched ahead
        self._stems: dict[tuple[str, str], str] = {}  # (group, entry) -> the name it was queued under, once read

    def prefetch(self, receipts: list[Receipt]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for _seq, group, ref, _deliveries in receipts:
            pipe.xrange(self.keys.stream(group), ref, ref)
        try:
            found = pipe.execute()
        except UNAVAILABLE:
            return  # read() fetches each one, and says so
        for (_seq, group, ref, _deliveries), entries in zip(receipts, found, strict=True):
            self._cache[(group, ref)] = entries[0][1] if entries else None

    def read(self, group: str, ref: str) -> Raw:
        fields = self._cache.pop((group, ref), _MISSING)
        if fields is _MISSING:
            try:
                entries = self.client.xrange(self.keys.stream(group), ref, ref)
            except UNAVAILABLE as exc:
                raise unavailable(exc, self.config) from exc
            fields = entries[0][1] if entries else None
        if fields is None:
            raise FileNotFoundError(f"stream entry {ref} of group {group} is gone")
        data = fields.get(b"m")
        stem = _text(fields.get(b"s")) or ref
        if not isinstance(data, bytes):
            raise InvalidMessage("malformed stream entry: it has no message body (field m)")
        if len(data) > self.max_bytes:
            error = InvalidMessage(f"too large: {len(data)} bytes, the limit is {self.max_bytes} "
                                   "([spool] max_message_bytes)")
            error.head = data[:SNIFF_BYTES]
            raise error
        fmt = _text(fields.get(b"f"))
        queued_as = _text(fields.get(b"q")) or stem  # the name its publish remembered (for MessageExists)
        self._stems[(group, ref)] = queued_as
        return Raw(data, fmt if fmt in FORMATS else None, stem, _text(fields.get(b"i")) or "messages", 0.0,
                   queued_as)

    def names(self, ref: str) -> tuple[str | None, str]:
        return None, ref

    def is_acked(self, group: str, message_id: str, *, holds: bool = False) -> bool:
        try:
            return bool(self.client.exists(self.keys.ack(group, message_id)))
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc

    def complete(self, group: str, ref: str, ack_id: str | None, token: Any) -> dict[str, Any] | None:
        """Ack, XACK and XDEL in one script call; when Redis is away, the supervisor finishes it later."""
        self._stems.pop((group, ref), None)
        try:
            complete(self.scripts, self.keys, group, ref, token or ref, ack_id, now_iso(), self.retention,
                     self.answer_ttl)
        except UNAVAILABLE as exc:
            return {"ackHold": ref, "id": ack_id, "name": token or ref, "error": str(exc), "errno": None}
        return None

    def complete_duplicate(self, group: str, ref: str, ack_id: str, token: Any) -> None:
        self._stems.pop((group, ref), None)
        try:
            complete(self.scripts, self.keys, group, ref, token or ref, ack_id, now_iso(), self.retention,
                     self.answer_ttl)
        except UNAVAILABLE:
            pass  # it stays pending, and comes back as a duplicate again later

    def reply(self, group: str, request_id: str, data: bytes) -> bool:
        key = self.keys.response(group, request_id)
        try:
            self.client.pipeline(transaction=True).lpush(key, data).expire(key, self.response_ttl).execute()
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc
        return True

    def error_ref(self, group: str, ref: str) -> str:
        return f"{group}/dead-letters/{ref}"

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None,
                   error_ref: str = "") -> None:
        error_ref = error_ref or self.error_ref(group, ref)
        body = dict(record, originalEntry=ref, group=group, time=now_iso())
        nack_body = json.dumps(dict(nack, errorFile=error_ref)).encode() if nack is not None else None
        name = self._stems.pop((group, ref), ref)
        try:
            done = quarantine(self.scripts, self.keys, group, ref, name, record.get("id"),
                              json.dumps(body, default=str).encode(), nack_body, self.retention, self.answer_ttl)
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc
        if not done:
            raise FileNotFoundError(f"stream entry {ref} of group {group} is gone")

    def close(self) -> None:
        self.client.close()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else ""
