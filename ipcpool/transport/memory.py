"""An in-memory transport: the seam's verbs over a few dicts, in one process.

What huey's ``MemoryStorage`` and dramatiq's ``StubBroker`` are to their
consumers: the pool's unit tests drive dispatch, put-backs, poison and the
dead letters through it, with no folder, no Redis and no worker process.
A :class:`MemoryBroker` holds the state; a source, a store and an outbox
share it. Not for production: nothing survives the process.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipcpool.errors import InvalidMessage, MessageExists
from ipcpool.message import Summary, format_for, summarize_bytes
from ipcpool.ordering import MARK, Expiries, Rule, Sequencer, expiry_of_bytes, key_of_bytes
from ipcpool.records import ErrorEntry
from ipcpool.transport.base import AckHeld, Answer, MessageGone, Raw, Receipt, Taken, Unfinished

Key = tuple[str, str]  # (group, ref)


@dataclass
class MemoryBroker:
    """The state the three sides share: queues, what is taken, answers, failures, dead letters."""

    queues: dict[str, OrderedDict[str, tuple[str, bytes]]] = field(default_factory=dict)  # ref -> (name, bytes)
    taken: dict[Key, tuple[str, bytes]] = field(default_factory=dict)
    later: dict[Key, float] = field(default_factory=dict)
    acks: set[Key] = field(default_factory=set)  # (group, message id)
    nacks: dict[Key, dict[str, Any]] = field(default_factory=dict)
    responses: dict[Key, bytes] = field(default_factory=dict)
    failures: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    dead: list[ErrorEntry] = field(default_factory=list)
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)  # [[schedule]] name -> its record
    _refs: itertools.count = field(default_factory=lambda: itertools.count(1))

    def queue(self, group: str) -> OrderedDict[str, tuple[str, bytes]]:
        return self.queues.setdefault(group, OrderedDict())

    def put(self, group: str, name: str, data: bytes) -> str:
        """Queue bytes under a file-like name; returns its ref."""
        if any(n == name and d != data for n, d in self.queue(group).values()):
            raise MessageExists(group, name)
        ref = f"{next(self._refs)}:{name}"
        self.queue(group)[ref] = (name, data)
        return ref


class MemorySource:
    """``rules``: the groups that order their messages (``ipcpool.ordering.rules_of``); a message of a sequence
    whose head is handed out waits in ``lines``, out of its queue."""

    backend = "memory"

    def __init__(self, broker: MemoryBroker, clock: Callable[[], float] = time.monotonic,
                 rules: dict[str, Rule] | None = None) -> None:
        self.broker = broker
        self.clock = clock
        self.rules = rules or {}
        self.lines = Sequencer()
        self.waiting: dict[Key, tuple[str, bytes]] = {}
        self.delayed: set[Key] = set()  # held until due: back at the end of its queue then, a new arrival
        self.expiries = Expiries()  # waiting ones with an expiresAt: out of their lines, out of turn, once past it
        self.out_of_turn: set[Key] = set()

    def open(self) -> int:
        return 0

    def filenos(self) -> list[int]:
        return []

    def poll(self, now: float, ready: Collection[int] = (), room: int = 0) -> bool:
        if self.expiries.heap:
            for key in self.expiries.due(time.time(), self.lines.waiting):  # expiresAt is wall-clock time
                if self.lines.out_of_turn(key):
                    self.out_of_turn.add(key)
                    queue = self.broker.queue(key[0])
                    queue[key[1]] = self.waiting.pop(key)
                    queue.move_to_end(key[1], last=False)  # first: the worker dead-letters it expired
        for key, due in list(self.broker.later.items()):
            if now >= due:
                del self.broker.later[key]
                if key in self.delayed:
                    self.delayed.discard(key)
                    entry = self.broker.taken.pop(key, None)
                    if entry is not None:
                        self.broker.queue(key[0])[key[1]] = entry  # at the end: a sequence's, at its line's end
                else:
                    self.requeue(*key)
        return False

    def wake_at(self) -> float | None:
        """Delays are requeues for later here: the loop's tick finds them; the next expiry in a line."""
        return self.expiries.next_at()

    def backlog(self) -> int:
        return sum(len(q) for q in self.broker.queues.values())  # waiting ones are out of the queues

    def take(self, n: int) -> list[Taken]:
        taken: list[Taken] = []
        for group, queue in self.broker.queues.items():
            while queue and len(taken) < n:
                ref, entry = queue.popitem(last=False)
                if (group in self.rules or MARK in entry[0]) and not self._admitted(group, ref, entry):
                    continue
                self.broker.taken[(group, ref)] = entry
                taken.append((group, ref, len(self.broker.failures.get((group, ref), [])) + 1))
        return taken

    def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Nothing expires here."""

    def done(self, group: str, ref: str, unfinished: Unfinished | None = None) -> None:
        self.broker.taken.pop((group, ref), None)
        self.broker.failures.pop((group, ref), None)
        self._next_in_line((group, ref))

    def _admitted(self, group: str, ref: str, entry: tuple[str, bytes]) -> bool:
        """Unordered, or its sequence's free head: handed out; else it waits in its line."""
        key = (group, ref)
        seq = self.lines.seq_of.get(key)
        if seq is None:
            if key in self.out_of_turn:
                self.out_of_turn.discard(key)
                return True
            try:
                ordering_key = key_of_bytes(entry[1], format_for(entry[0]), self.rules.get(group))
            except InvalidMessage:
                return True
            if ordering_key is None:
                return True
            seq = (group, ordering_key)
        if self.lines.admit(key, seq):
            return True
        if key not in self.waiting:
            expires = expiry_of_bytes(entry[1], format_for(entry[0]))
            if expires is not None:
                self.expiries.add(expires, key, self.lines.waiting)
        self.waiting[key] = entry
        return False

    def _next_in_line(self, key: Key) -> None:
        head = self.lines.finish(key)
        if head is not None:
            queue = self.broker.queue(head[0])
            queue[head[1]] = self.waiting.pop(head)
            queue.move_to_end(head[1], last=False)

    def requeue(self, group: str, ref: str, *, later: float = 0.0) -> None:
        entry = self.broker.taken.pop((group, ref), None)
        if later:
            if entry is not None:
                self.broker.taken[(group, ref)] = entry
            self.broker.later[(group, ref)] = self.clock() + later
        elif entry is not None:
            queue = self.broker.queue(group)
            queue[ref] = entry
            queue.move_to_end(ref, last=False)  # it was next once; it is next again
        self.lines.back((group, ref), (group, ref))

    def delay(self, group: str, ref: str, until: float) -> None:
        """Held as a requeue for later is (one process: nothing to survive); a message of a sequence leaves its
        line meanwhile (the next may run) and joins its end when due, as a new arrival."""
        self.requeue(group, ref, later=max(until - time.time(), 0.001))
        self.delayed.add((group, ref))
        self._next_in_line((group, ref))

    def record_failure(self, group: str, ref: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
        history = self.broker.failures.setdefault((group, ref), [])
        history.append(entry)
        return list(history)

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None) -> bool:
        entry = self.broker.taken.pop((group, ref), None)
        if entry is None:
            return False
        self.broker.failures.pop((group, ref), None)
        self._next_in_line((group, ref))
        self.broker.dead.append(ErrorEntry(group, ref, dict(record, data=entry[1].decode(errors="replace"))))
        if nack is not None:
            self.broker.nacks[(group, str(nack["id"]))] = nack
        return True

    def summarize(self, group: str, ref: str) -> Summary:
        name, data = self.broker.taken.get((group, ref), (ref, b""))
        return summarize_bytes(data, format_for(name), name.rsplit(".", 1)[0])

    def housekeeping(self, live_pids: set[int]) -> None:
        """Nothing to prune."""

    @property
    def holds_acks(self) -> bool:
        return False

    @property
    def sequenced(self) -> dict[Key, Any]:
        return self.lines.seq_of

    def stats(self) -> dict[str, Any]:
        waiting = self.lines.waiting_by_group()
        groups = {g: {"queued": len(q) + waiting.get(g, 0), "waiting": waiting.get(g, 0),
                      "errors": sum(1 for e in self.broker.dead if e.group == g),
                      "oldestQueuedAge": None} for g, q in self.broker.queues.items()}
        return {"groups": groups, "transport": {"stranded": 0, "full": False, "ackHolds": 0, "error": None}}

    def announce(self, status: dict[str, Any]) -> None:
        """One process: nobody else to tell."""

    def close(self) -> None:
        for group, ref in list(self.broker.taken):
            self.requeue(group, ref)


class MemoryStore:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def prefetch(self, receipts: Sequence[Receipt]) -> None:
        """Everything is at hand already."""

    def read(self, group: str, ref: str) -> Raw:
        entry = self.broker.taken.get((group, ref))
        if entry is None:
            raise MessageGone(f"{group}/{ref} is gone")
        name, data = entry
        return Raw(data, format_for(name), name.rsplit(".", 1)[0])

    def names(self, ref: str) -> tuple[str | None, str]:
        name = ref.split(":", 1)[-1]
        return format_for(name), name.rsplit(".", 1)[0]

    def is_acked(self, group: str, message_id: str, *, holds: bool = False) -> bool:
        return (group, message_id) in self.broker.acks

    def complete(self, group: str, ref: str, ack_id: str | None, token: Any, *, duplicate: bool = False
                 ) -> AckHeld | None:
        if ack_id is not None:
            self.broker.acks.add((group, ack_id))
        return None

    def forget(self, group: str, ref: str) -> None:
        """Nothing is kept of a message once read."""

    def settle(self) -> dict[tuple[str, str], AckHeld]:
        return {}

    def reply(self, group: str, request_id: str, data: bytes) -> bool:
        self.broker.responses[(group, request_id)] = data
        return True

    def error_ref(self, group: str, ref: str) -> str:
        return f"{group}/errors/{ref}"

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None,
                   error_ref: str = "") -> None:
        if (group, ref) not in self.broker.taken:
            raise MessageGone(f"{group}/{ref} is gone")
        self.broker.dead.append(ErrorEntry(group, ref, dict(record)))
        if nack is not None:
            self.broker.nacks[(group, str(nack["id"]))] = nack

    def close(self) -> None:
        pass


class MemoryOutbox:
    backend = "memory"
    root = None

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def ensure_group(self, group: str) -> None:
        self.broker.queue(group)

    def publish(self, group: str, name: str, data: bytes) -> None:
        self.broker.put(group, name, data)

    def present(self, group: str, name: str, message_id: str) -> bool:
        queued = any(n == name for n, _ in self.broker.queue(group).values())
        return queued or any(n == name for (g, _r), (n, _d) in self.broker.taken.items() if g == group) or \
            (group, message_id) in self.broker.acks

    def is_acked(self, group: str, message_id: str) -> bool:
        return (group, message_id) in self.broker.acks

    def nack(self, group: str, message_id: str) -> dict[str, Any] | None:
        return self.broker.nacks.get((group, message_id))

    def wait_answer(self, group: str, message_id: str, timeout: float, accept_nack: Callable[[dict[str, Any]], bool],
                    *, reply_group: str | None = None) -> Answer | None:
        """What is there now (one process: nothing arrives while this waits)."""
        if reply_group is not None and (reply_group, message_id) in self.broker.responses:
            return "response", self.broker.responses.pop((reply_group, message_id))
        if reply_group is None and (group, message_id) in self.broker.acks:
            return "ack", None
        nack = self.broker.nacks.get((group, message_id))
        return ("nack", nack) if nack is not None and accept_nack(nack) else None

    async def async_wait_answer(self, group: str, message_id: str, timeout: float,
                                accept_nack: Callable[[dict[str, Any]], bool], *,
                                reply_group: str | None = None) -> Answer | None:
        return self.wait_answer(group, message_id, timeout, accept_nack, reply_group=reply_group)

    def depth(self, group: str) -> int:
        return len(self.broker.queue(group))

    def supervisor_running(self) -> bool | None:
        return None

    def schedule_marks(self, names: Sequence[str], *, since: int | None = None) -> dict[str, dict[str, Any]]:
        marks = self.broker.schedules
        for name in names:
            if since is not None and name not in marks:
                marks[name] = {"since": since}
        return {name: dict(marks[name]) for name in names if name in marks}

    def publish_due(self, schedule: str, due: int, group: str, name: str, data: bytes, mark: dict[str, Any]) -> bool:
        last = self.broker.schedules.get(schedule, {}).get("due")
        if last is not None and last >= due:
            return False
        self.publish(group, name, data)
        self.broker.schedules[schedule] = {**self.broker.schedules.get(schedule, {}), **mark, "due": due}
        return True

    def close(self) -> None:
        pass

