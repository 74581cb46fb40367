"""What operators look at on Redis: each group's depth, pending and dead letters; every live supervisor."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis.exceptions

from ipcpool.config import Config
from ipcpool.message import MESSAGE_ID
from ipcpool.ordering import MARK, key_at_publish, rules_of
from ipcpool.records import ErrorEntry
from ipcpool.transport.redis.connection import UNAVAILABLE, connect, unavailable
from ipcpool.transport.redis.keys import CONSUMER_GROUP, Keys
from ipcpool.transport.redis.scripts import Scripts, publish
from ipcpool.transport.redis.store import _text


class RedisInspector:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = connect(config, timeout=5.0)
        self.keys = Keys(config.redis.prefix)

    def groups(self) -> list[str]:
        try:
            known = {_text(g) for g in self.client.smembers(self.keys.groups)}
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc
        return sorted(known | set(self.config.spool.groups))

    def counts(self) -> dict[str, dict[str, int]]:
        names = self.groups()
        pipe = self.client.pipeline(transaction=False)
        for group in names:
            pipe.xlen(self.keys.stream(group))
            pipe.xpending(self.keys.stream(group), CONSUMER_GROUP)
            pipe.xlen(self.keys.dead(group))
            pipe.zcard(self.keys.delayed(group))
        replies = pipe.execute(raise_on_error=False)
        counts = {}
        for n, group in enumerate(names):
            depth, pending, dead, delayed = replies[4 * n: 4 * n + 4]
            processing = pending.get("pending", 0) if isinstance(pending, dict) else 0
            depth = depth if isinstance(depth, int) else 0
            counts[group] = {"queued": max(0, depth - processing), "processing": processing,
                             "errors": dead if isinstance(dead, int) else 0,
                             "delayed": delayed if isinstance(delayed, int) else 0}
        return counts

    def busy(self) -> bool:
        return any(c["queued"] or c["processing"] for c in self.counts().values())

    def supervisors(self) -> list[dict[str, Any]]:
        """The status every live supervisor of the cluster published (they expire unless renewed)."""
        found = []
        for key in self.client.scan_iter(match=self.keys.supervisors, count=100):
            body = self.client.get(key)
            try:
                record = json.loads(body) if body else None
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def ping(self) -> None:
        try:
            self.client.ping()
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc

    def dead_letters(self) -> RedisDeadLetters:
        return RedisDeadLetters(self)

    def close(self) -> None:
        self.client.close()


class RedisDeadLetters:
    """The groups' dead-letter streams, for ``ipcpool errors``: the same verbs as errors/."""

    def __init__(self, inspector: RedisInspector) -> None:
        self.inspector = inspector
        self.client = inspector.client
        self.keys = inspector.keys
        self.scripts = Scripts(self.client)

    def list(self, group: str | None = None) -> list[ErrorEntry]:
        entries: list[ErrorEntry] = []
        for g in [group] if group else self.inspector.groups():
            for entry_id, fields in self.client.xrange(self.keys.dead(g)):
                try:
                    record = json.loads(fields.get(b"r") or b"{}")
                except ValueError:
                    record = {"reason": "unreadable error record"}
                entries.append(ErrorEntry(g, _text(entry_id), record))
        entries.sort(key=lambda e: (e.epoch_ms, e.group, e.file))
        return entries

    def find(self, wanted: str, group: str | None = None) -> tuple[list[ErrorEntry], set[str]]:
        entries = self.list(group)
        matches = [e for e in entries if wanted in (e.message_id, e.file, e.record.get("originalEntry"))]
        if not matches:
            matches = [e for e in entries if e.message_id.startswith(wanted) or e.file.startswith(wanted)]
        return matches, {e.message_id for e in matches}

    def _fields(self, entry: ErrorEntry) -> dict[bytes, bytes] | None:
        found = self.client.xrange(self.keys.dead(entry.group), entry.file, entry.file)
        return found[0][1] if found else None

    def read(self, entry: ErrorEntry) -> bytes | None:
        fields = self._fields(entry)
        return fields.get(b"m") if fields else None

    def has_message(self, entry: ErrorEntry) -> bool:
        return self._fields(entry) is not None

    def retry(self, entry: ErrorEntry) -> str:
        """Back into its group's stream, as a new entry (a fresh delivery count); its nack goes."""
        fields = self._fields(entry) or {}
        stem = _text(fields.get(b"s")) or entry.message_id
        data = fields.get(b"m") or b""
        fmt = _text(fields.get(b"f"))
        # Its sequence, if it has one, at the end of its line (read as a marked message: one retry, one read).
        sequence = key_at_publish(rules_of(self.inspector.config), entry.group, f"{stem}{MARK}{fmt}", data)
        reply = publish(self.scripts, self.keys, entry.group, f"{stem}@retried-{entry.file}", stem, data,
                        fmt, _text(fields.get(b"i")) or "messages",
                        hashlib.sha1(data).hexdigest(), 0, max(1, int(self.inspector.config.ack.retention)),
                        sequence=sequence)
        pipe = self.client.pipeline(transaction=True)
        pipe.xdel(self.keys.dead(entry.group), entry.file)
        if MESSAGE_ID.match(entry.message_id):
            pipe.delete(self.keys.nack(entry.group, entry.message_id))
        pipe.execute()
        new_id = _text(reply[1]) if reply and len(reply) > 1 else "?"
        return f"{entry.message_id} (stream entry {new_id})"

    def purge(self, entry: ErrorEntry) -> None:
        try:
            self.client.xdel(self.keys.dead(entry.group), entry.file)
        except redis.exceptions.ResponseError:
            pass
