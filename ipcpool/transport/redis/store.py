"""A worker's side on Redis: read an entry, check the ack ledger, complete, reply, dead-letter.

A receipt's ``ref`` is the entry's id in its group's stream. Everything per
message or per batch goes down one connection of the worker's own (the
lane), in order: a batch's fetch (the entries, and whether the ledger holds
each one's stem) is sent when the batch arrives and read when an entry is
first needed; a completion (ack, XACK, XDEL: one MULTI/EXEC) is sent when
the handler returns, without asking for a reply; ``settle``, before the
worker reports, checks in one round trip that every completion it sent took
(its entry is gone) and sends again, answered, any that did not. Nothing
read from Redis is ever unpickled: an
entry is a few byte strings, and one that is malformed (no body, an unknown
format) or too large is quarantined with the reason like any invalid message.
"""

from __future__ import annotations

import json
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from ipcpool.config import Config
from ipcpool.config import ack_retry_window as _window
from ipcpool.errors import InvalidMessage
from ipcpool.message import FORMATS, SNIFF_BYTES, now_iso
from ipcpool.transport.base import AckHeld, MessageGone, Raw, Receipt
from ipcpool.transport.redis.connection import UNAVAILABLE, Lane, connect, unavailable
from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, complete, complete_commands, fetch_call, quarantine

_MISSING = object()
Completion = tuple[str, str, str, str | None, str]  # (group, entry, the name it was queued under, ack id, acked at)


class RedisStore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = connect(config)
        self.keys = Keys(config.redis.prefix)
        self.scripts = Scripts(self.client)
        self.lane = Lane(self.client)  # the calls made per message or per batch: fetch, complete
        try:  # loaded now, so the first batch is not refused (NOSCRIPT) and fetched entry by entry
            self.scripts.fetch.sha = self.lane.script_load(self.scripts.fetch.script)
        except UNAVAILABLE:
            pass  # loaded when first refused
        self.max_bytes = config.spool.max_message_bytes
        self.retention = max(1, int(config.ack.retention))
        self.answer_ttl = max(60, int(_window(config.ack)) + 60)  # a sender may wait this long for an answer
        self.response_ttl = max(1, int(config.spool.response_retention))
        self._cache: dict[tuple[str, str], Any] = {}  # (group, entry) -> (its fields, acked?), fetched ahead
        self._stems: dict[tuple[str, str], str] = {}  # (group, entry) -> the name it was queued under, once read
        self._answer: tuple[str, str, bool] | None = None  # (group, stem, acked) fetched with the entry just read
        self._acked_here: set[tuple[str, str]] = set()  # (group, id) this worker acked since those answers
        self._sent: list[tuple[Completion, bool]] = []  # completions sent unanswered, not checked yet
        self._failed: dict[tuple[str, str], dict[str, Any]] = {}  # completions that failed, until settle()
        self._fetching: list[tuple[str, list[str]]] = []  # a fetch sent, its replies not read yet

    def prefetch(self, receipts: list[Receipt]) -> None:
        """Ask for the batch's entries and their dedupe answers (a script call per group), not waiting.

        The replies are read when an entry is first needed or before the next
        completion is sent, so the round trip overlaps the message in hand.
        """
        by_group: dict[str, list[str]] = {}
        for _seq, group, ref, _deliveries in receipts:
            by_group.setdefault(group, []).append(ref)
        self._finish_fetch()  # one fetch in flight at a time
        calls = [fetch_call(self.keys, group, refs) for group, refs in by_group.items()]
        try:
            self.lane.send_many([("EVALSHA", self.scripts.fetch.sha, len(keys), *keys, *args) for keys, args in calls])
        except UNAVAILABLE:
            return  # read() fetches each one, and says so
        self._fetching = list(by_group.items())

    def _finish_fetch(self) -> None:
        """Read the fetch's replies (completions sent before it are not answered: nothing comes first)."""
        if not self._fetching:
            return
        batches, self._fetching = self._fetching, []
        replies: list[Any] = []
        try:
            for _ in batches:  # every reply is read, even after an error, so the lane stays in step
                try:
                    replies.append(self.lane.receive())
                except NoScriptError:  # Redis restarted, its script cache empty: read() fetches each one
                    self.scripts.fetch.sha = self.lane.script_load(self.scripts.fetch.script)
                    replies.append(None)
                except ResponseError:
                    replies.append(None)
        except UNAVAILABLE:
            return
        if not self._cache:
            self._acked_here.clear()  # no answer fetched earlier is still waiting to be used
        for (group, refs), reply in zip(batches, replies, strict=False):
            if reply is None:
                continue
            for k, ref in enumerate(refs):
                flat, acked = reply[2 * k], reply[2 * k + 1]
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
                self._cache[(group, ref)] = (fields, bool(acked))

    def read(self, group: str, ref: str) -> Raw:
        if (group, ref) not in self._cache:
            self._finish_fetch()
        fields, acked = self._cache.pop((group, ref), (_MISSING, None))
        if fields is _MISSING:
            try:
                entries = self.client.xrange(self.keys.stream(group), ref, ref)
            except UNAVAILABLE as exc:
                raise unavailable(exc, self.config) from exc
            fields = entries[0][1] if entries else None
        if fields is None:
            raise MessageGone(f"stream entry {ref} of group {group} is gone")
        data = fields.get(b"m")
        stem = _text(fields.get(b"s")) or ref
        self._answer = (group, stem, acked) if acked is not None else None
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
        """The ledger's answer fetched with the entry when its id is the stem; else one EXISTS.

        An id this worker acked since that answer was fetched (a second copy
        in the same batch) is acked whatever the answer said.
        """
        if (group, message_id) in self._acked_here:
            return True
        answer, self._answer = self._answer, None
        if answer is not None and answer[0] == group and answer[1] == message_id:
            return answer[2]
        self._finish_fetch()
        try:  # after this worker's completions on the lane: it sees its own acks
            return bool(self.lane.exists(self.keys.ack(group, message_id)))
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc

    def complete(self, group: str, ref: str, ack_id: str | None, token: Any, *, duplicate: bool = False
                 ) -> dict[str, Any] | None:
        """Ack, XACK and XDEL in one MULTI/EXEC, sent unanswered; ``settle`` checks that it took (a
        ``duplicate``'s is not reported: if it fails, the copy comes back and is skipped again).

        The worker goes on to its next message while Redis runs this one, and
        reports neither to the supervisor before ``settle`` checked. The
        command is in the kernel's hands before the next handler starts, and
        nothing on the lane is unread then (the batch's fetch is read first),
        so a SIGKILL after that still delivers it: the socket closes with FIN,
        not a reset. So the window between a handler's success and its ack is
        the spool's: one write.
        """
        self._stems.pop((group, ref), None)
        if ack_id is not None and not duplicate:
            self._acked_here.add((group, ack_id))
        self._send_complete(group, ref, ack_id, token, report=not duplicate)
        return None

    def forget(self, group: str, ref: str) -> None:
        """A delayed entry handed back: the name read with it is not needed (the supervisor holds it now)."""
        self._stems.pop((group, ref), None)

    def settle(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Check the completions sent since the last call; (group, ref) -> what the supervisor must finish.

        One round trip: each sent entry looked up in its stream (Redis has run
        every command sent before it). An entry still there was refused (a
        full Redis, say): it is completed again, answered, and reported as an
        ack the supervisor must finish only if that fails too; so is every
        one when Redis cannot be asked.
        """
        sent, self._sent = self._sent, []
        if sent:
            self._finish_fetch()
            try:
                self.lane.send_many([("XRANGE", self.keys.stream(call[0]), call[1], call[1], "COUNT", 1)
                                     for call, _report in sent])
                present = [bool(self.lane.receive()) for _ in sent]
            except UNAVAILABLE as exc:  # not known whether they took: the supervisor finishes them when it can
                for call, report in sent:
                    self._complete_failed(call, exc, report)
            else:
                for (call, report), there in zip(sent, present, strict=True):
                    if there:
                        self._complete_again(call, report)
        failed, self._failed = self._failed, {}
        return failed

    def _send_complete(self, group: str, ref: str, ack_id: str | None, token: Any, *, report: bool) -> None:
        self._finish_fetch()  # nothing unread on the lane when a completion goes out (see complete())
        call: Completion = (group, ref, token or ref, ack_id, now_iso())
        try:
            self.lane.fire([("MULTI",), *complete_commands(self.keys, group, ref, call[2], ack_id, call[4],
                                                           self.retention, self.answer_ttl), ("EXEC",)])
        except UNAVAILABLE as exc:
            self._complete_failed(call, exc, report)
            return
        self._sent.append((call, report))

    def _complete_again(self, call: Completion, report: bool) -> None:
        group, ref, name, ack_id, acked_at = call
        try:
            complete(self.client, self.keys, group, ref, name, ack_id, acked_at, self.retention, self.answer_ttl)
        except (*UNAVAILABLE, ResponseError) as exc:  # away, or refusing writes: finished later
            self._complete_failed(call, exc, report)

    def _complete_failed(self, call: Completion, exc: BaseException, report: bool) -> None:
        group, ref, name, ack_id, _at = call
        if report:
            self._failed[(group, ref)] = AckHeld(ref, ack_id, str(exc), name=name)

    def reply(self, group: str, request_id: str, data: bytes) -> bool:
        key = self.keys.response(group, request_id)
        try:
            self.client.pipeline(transaction=True).lpush(key, data).expire(key, self.response_ttl).execute()
        except UNAVAILABLE as exc:
            raise unavailable(exc, self.config) from exc
        return True

    def error_ref(self, group: str, ref: str) -> str:
        return f"{group}/errors/{ref}"  # as `ipcpool errors show` names it (and finds it: by its entry)

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
            raise MessageGone(f"stream entry {ref} of group {group} is gone")

    def close(self) -> None:
        self._finish_fetch()  # nothing unread: the lane closes with FIN, and what it sent is delivered
        self.lane.close()
        self.client.close()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else ""
