"""Answers for files that came in by the bridge, written back beside them, wherever the message was handled.

An agent that only has files drops an envelope asking for an ack (``requiresAck``)
or a response (``replyTo``) into this supervisor's local inbox; the bridge moves it
into the cluster (:mod:`ingest`), and any host may handle it. Its answers live in
Redis (the ack ledger, the nack, the response list), which such a writer cannot
read. So the bridge records each such message, in the same publish call, in a hash
of this supervisor's (``<p>:relay:<consumer>``), and the relay looks for their
answers every :data:`RELAY_INTERVAL` while any waits, all in one round trip: an ack
becomes ``acks/<id>.ack``, a nack ``acks/<id>.nack``, a response
``<replyTo>/responses/<id>.json``, in the local root, exactly as on the spool. The
record is in Redis, and this supervisor's consumer name is kept on its root, so a
restart in between goes on where it stopped. A record answered by nothing within
``[ack] retention`` is dropped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ipcpool.config import Config
from ipcpool.transport.redis.keys import Keys

log = logging.getLogger(__name__)

RELAY_INTERVAL = 0.1  # seconds between looks for the answers of bridged files, while any waits


@dataclass(slots=True)
class Relayed:
    """One bridged message whose writer waits for answers in the local root."""

    reply_to: str | None  # a response is wanted there
    wants_ack: bool
    since: float  # wall time it was sent on
    timestamp: str | None = None  # the envelope's: a nack of this very message says it (an older one does not)
    done: set[str] = field(default_factory=set)  # "ack", "response": written back already

    def owns(self, nack: Any) -> bool:
        """A nack of this message, not of an earlier one under the same id (nacks outlive their message): its
        envelope's timestamp (a hand-written envelope without one cannot tell, as on the spool)."""
        return isinstance(nack, dict) and (self.timestamp is None or nack.get("timestamp") == self.timestamp)

    @property
    def answered(self) -> bool:
        return (not self.wants_ack or "ack" in self.done) and (self.reply_to is None or "response" in self.done)


def relay_field(group: str, message_id: str) -> str:
    return f"{group}/{message_id}"  # neither a group name nor an id may hold '/'


def relay_value(reply_to: str | None, wants_ack: bool, timestamp: str | None) -> str:
    return json.dumps({"replyTo": reply_to, "ack": wants_ack, "since": time.time(), "timestamp": timestamp})


class AnswerRelay:
    def __init__(self, config: Config, client: Any, keys: Keys, spool: Any, consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.spool = spool  # the local root's (the bridge's): where the writers look
        self.consumer = consumer
        self.retention = config.ack.retention
        self.pending: dict[tuple[str, str], Relayed] = {}
        self.next_check = 0.0
        self._failing: set[tuple[str, str]] = set()  # local writes that failed (logged once each)

    @property
    def key(self) -> str:
        return self.keys.relay(self.consumer)

    def load(self) -> int:
        """What a previous run of this supervisor still had to write back; returns how many."""
        for raw_field, raw_value in (self.client.hgetall(self.key) or {}).items():
            group, _, message_id = raw_field.decode(errors="replace").partition("/")
            try:
                value = json.loads(raw_value)
                self.pending[(group, message_id)] = Relayed(value.get("replyTo"), bool(value.get("ack")),
                                                            float(value.get("since") or time.time()),
                                                            value.get("timestamp"))
            except (ValueError, TypeError, AttributeError):
                self.client.hdel(self.key, raw_field)
        return len(self.pending)

    def add(self, group: str, message_id: str, reply_to: str | None, wants_ack: bool, timestamp: str | None
            ) -> None:
        """The bridge sent it on (the hash entry is written by the same publish call)."""
        self.pending[(group, message_id)] = Relayed(reply_to, wants_ack, time.time(), timestamp)

    def check(self, now: float) -> None:
        """One round trip for every answer awaited; each found is written beside the file (raises UNAVAILABLE)."""
        if not self.pending or now < self.next_check:
            return
        self.next_check = now + RELAY_INTERVAL
        keys, items = self.keys, list(self.pending.items())
        pipe = self.client.pipeline(transaction=False)
        for (group, message_id), relayed in items:
            pipe.exists(keys.ack(group, message_id))
            pipe.get(keys.nack(group, message_id))
            pipe.lindex(keys.response(relayed.reply_to or group, message_id), 0)
        replies = pipe.execute()
        finished: list[str] = []
        wall = time.time()
        for n, ((group, message_id), relayed) in enumerate(items):
            acked, nack, response = replies[3 * n:3 * n + 3]
            if self._write_back(group, message_id, relayed, bool(acked), nack, response):
                finished.append(relay_field(group, message_id))
                del self.pending[(group, message_id)]
            elif wall - relayed.since > self.retention:
                log.warning("no answer came for a bridged message within [ack] retention; its writer is not told "
                            "group=%s id=%s", group, message_id)
                finished.append(relay_field(group, message_id))
                del self.pending[(group, message_id)]
        if finished:
            self.client.hdel(self.key, *finished)

    def _write_back(self, group: str, message_id: str, relayed: Relayed, acked: bool, nack: bytes | None,
                    response: bytes | None) -> bool:
        """Write what came; True once everything its writer waits for is written (a nack ends it all)."""
        key = (group, message_id)
        try:
            if response is not None and relayed.reply_to is not None and "response" not in relayed.done:
                if self.spool.folders.is_group_dir(relayed.reply_to):
                    self.spool.ledger.write_response(relayed.reply_to, message_id, response)
                else:
                    log.warning("Response dropped: replyTo group %r has no folder here id=%s group=%s",
                                relayed.reply_to, message_id, group)
                self.client.delete(self.keys.response(relayed.reply_to, message_id))
                relayed.done.add("response")
            if acked and relayed.wants_ack and "ack" not in relayed.done:
                self.spool.ledger.write_ack(group, message_id)
                relayed.done.add("ack")
            if nack is not None:
                body = json.loads(nack)
                if relayed.owns(body) and body.get("id") == message_id:
                    self.spool.ledger.write_nack(group, body)
                    return True
        except OSError as exc:  # a full disk, a folder removed: tried again at the next look
            if key not in self._failing:
                self._failing.add(key)
                log.error("cannot write the answer of a bridged message beside it (%s); tried again group=%s id=%s",
                          exc.strerror or exc, group, message_id)
            return False
        self._failing.discard(key)
        return relayed.answered
