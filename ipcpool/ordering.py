"""Ordering: which sequence a message is in, and the supervisor side's line of each sequence.

A sequence is (group, key). The key is the envelope's ``orderingKey``, else the payload field named by
``[groups.<g>] ordering_field`` (the whole body of a legacy message), else, with ``ordering = "fifo"``,
``""`` (the group itself: a key a sender cannot give, as ``orderingKey`` is never empty). At most one message
of a sequence is in a handler at a time, in publish order.

Why the supervisor reads the key, and only of some messages: the key must be known before a message is
handed out (a worker that found it later would already be running it beside its predecessor), yet the
supervisor does not parse bodies, so unordered traffic keeps today's cost. It reads a body only when the
message can have a key: its group has ``ordering``/``ordering_field`` configured, or its name carries the
mark :data:`MARK` (``<id>.ordered.json``), which ipcpool's senders write whenever they set an ``orderingKey``.
A str test on the name is all an unmarked message in an unordered group pays.

:class:`Sequencer` is transport-neutral bookkeeping of refs, kept by each backend's source beside its own
queue: the head of a line is the one in a handler (or next to go); the others wait there, out of the
source's queue, so a waiting message holds no worker and other sequences keep the pool busy.

Expiry in a line: a waiting message with an ``expiresAt`` (read with its key: :func:`expiry_of`) is kept in
:class:`Expiries` too; once past it while still waiting, the source takes it out of its line and hands it out
*out of turn* (never as a head): the worker's window check dead-letters it as ``expired`` without running a
handler, so its sender is nacked at once rather than when the head before it is done, and no two messages of
a sequence are ever in a handler together. A message without ``expiresAt`` costs a substring test, no more.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from ipcpool.errors import InvalidMessage
from ipcpool.message import MAX_ORDERING_KEY, ORDERING_KEY, decode, format_for, is_envelope
from ipcpool.msgtime import EXPIRES_AT, parse_iso

log = logging.getLogger(__name__)

MARK = ".ordered."  # in a file's name (``<id>.ordered.json``): the body may carry an orderingKey
FIFO = "fifo"
ORDERINGS = ("none", FIFO)

Ref = tuple[str, str]  # (group, the backend's ref)
Seq = tuple[str, str]  # (group, key)


@dataclass(frozen=True, slots=True)
class Rule:
    """A group's ordering configuration."""

    fifo: bool = False
    field: str = ""


def rules_of(config: Any) -> dict[str, Rule]:
    """The groups that order their messages (``[groups.<g>] ordering``/``ordering_field``), by name."""
    return {name: Rule(g.ordering == FIFO, g.ordering_field) for name, g in config.groups.items()
            if g.ordering == FIFO or g.ordering_field}


def is_marked(name: str) -> bool:
    return MARK in name


def unmarked(stem: str) -> str:
    """A marked file's stem without the mark (the id the sender named it after)."""
    return stem.removesuffix(MARK[:-1])


def marked_name(stem: str, extension: str) -> str:
    """The file name a sender gives a message that carries an ``orderingKey``."""
    return f"{stem}.ordered{extension}"


def key_of(obj: Any, rule: Rule | None) -> str | None:
    """The sequence key of a decoded body under its group's ``rule``; None: not ordered."""
    payload = obj
    if is_envelope(obj):
        own = obj.get(ORDERING_KEY)
        if isinstance(own, str) and 0 < len(own) <= MAX_ORDERING_KEY:
            return own
        payload = obj["payload"]
    if rule is None:
        return None
    if rule.field and isinstance(payload, dict):
        value = payload.get(rule.field)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)[:MAX_ORDERING_KEY]
    return "" if rule.fifo else None


def expiry_of(obj: Any) -> float | None:
    """A decoded body's ``expiresAt`` (seconds since the epoch), None when it has none or not a readable one
    (the worker dead-letters a bad one in its turn)."""
    if not is_envelope(obj):
        return None
    text = obj.get(EXPIRES_AT)
    if text is None:
        return None
    try:
        return parse_iso(text, EXPIRES_AT)
    except InvalidMessage:
        return None


def expiry_of_bytes(data: bytes, fmt: str | None) -> float | None:
    """:func:`expiry_of` from bytes; a body that does not name ``expiresAt`` is not decoded."""
    if fmt is None or EXPIRES_AT.encode() not in data:
        return None
    try:
        return expiry_of(decode(data, fmt))
    except InvalidMessage:
        return None


def key_of_bytes(data: bytes, fmt: str | None, rule: Rule | None) -> str | None:
    """:func:`key_of` from a file's bytes. Bytes that do not decode (not yet, or never) are in a fifo group's
    line all the same (the worker settles or quarantines them in their turn); elsewhere InvalidMessage."""
    fifo = rule is not None and rule.fifo
    if fmt is None:
        return "" if fifo else None
    try:
        obj = decode(data, fmt)
    except InvalidMessage:
        if fifo:
            return ""
        raise
    return key_of(obj, rule)


def key_at_publish(rules: dict[str, Rule], group: str, name: str, data: bytes) -> str | None:
    """The sequence key a message is published with where the store keeps lines itself (Redis: a line per
    sequence, pushed with the entry in stream order, so every supervisor sees one order); None: unordered.
    Read only for a message that can have one (see the module docstring)."""
    if group not in rules and MARK not in name:
        return None
    try:
        return key_of_bytes(data, format_for(name), rules.get(group))
    except InvalidMessage:
        return None  # never handled as it stands: the worker dead-letters it


class Sequencer:
    """Per sequence, the line of its messages this supervisor knows, in order; the head alone may run.

    ``lines[seq]`` starts with its head; ``running`` has the sequences whose head is handed out.
    ``waiting`` is every ref behind a head (what status reports, and what a rescan must not offer again).
    """

    def __init__(self) -> None:
        self.lines: dict[Seq, deque[Ref]] = {}
        self.running: set[Seq] = set()
        self.seq_of: dict[Ref, Seq] = {}
        self.waiting: set[Ref] = set()

    def __contains__(self, ref: Ref) -> bool:
        return ref in self.seq_of

    def admit(self, ref: Ref, seq: Seq) -> bool:
        """The source would hand ``ref`` out: True when it may (its line's free head), else it waits in line."""
        line = self.lines.get(seq)
        if line is None:
            self.lines[seq] = deque((ref,))
            self.seq_of[ref] = seq
            self.running.add(seq)
            return True
        if line[0] == ref:
            if seq in self.running:
                return False
            self.running.add(seq)
            return True
        if ref not in self.seq_of:
            line.append(ref)
            self.seq_of[ref] = seq
            self.waiting.add(ref)
        return False

    def finish(self, ref: Ref) -> Ref | None:
        """``ref`` is done (handled, dead-lettered, gone): the next head, for the source to offer first."""
        seq = self.seq_of.pop(ref, None)
        if seq is None:
            return None
        self.waiting.discard(ref)
        line = self.lines[seq]
        if line[0] != ref:  # a waiting one vanished (removed by hand): the head is untouched
            line.remove(ref)
            return None
        line.popleft()
        self.running.discard(seq)
        if not line:
            del self.lines[seq]
            return None
        head = line[0]
        self.waiting.discard(head)
        return head

    def out_of_turn(self, ref: Ref) -> bool:
        """``ref`` leaves its line without running there (its expiry passed while it waited): True when it was
        waiting (the source hands it out out of turn); False when it is a head, or no longer known."""
        if ref not in self.waiting:
            return False
        seq = self.seq_of.pop(ref)
        self.waiting.discard(ref)
        self.lines[seq].remove(ref)  # never the head: a waiting ref is behind one
        return True

    def back(self, ref: Ref, new: Ref | None) -> None:
        """The head ``ref`` went back to the queue as ``new`` (a redelivery, a put-back): it stays the head,
        so it goes before anything behind it; None: it is gone after all (see :meth:`finish`)."""
        seq = self.seq_of.get(ref)
        if seq is None:
            return
        if new is None:
            raise ValueError("use finish() for a message that is gone")
        line = self.lines[seq]
        if line[0] == ref:
            self.running.discard(seq)
        if new != ref:
            line[line.index(ref)] = new
            del self.seq_of[ref]
            self.seq_of[new] = seq

    def waiting_by_group(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for group, _ref in self.waiting:
            counts[group] = counts.get(group, 0) + 1
        return counts


class Expiries:
    """(expiresAt, ref) of the messages waiting in lines that have one, soonest first; a ref that stopped
    waiting meanwhile is skipped when its time comes (``still``: the refs that wait)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, Any]] = []

    def add(self, expires: float, ref: Any, still: Any) -> None:
        heap = self.heap
        if len(heap) > 1024 and len(heap) > 4 * len(still):  # mostly refs that ran in their turn: dropped
            self.heap = heap = [item for item in heap if item[1] in still]
            heapq.heapify(heap)
        heapq.heappush(heap, (expires, ref))

    def next_at(self) -> float | None:
        return self.heap[0][0] if self.heap else None

    def due(self, now: float, still: Any) -> list[Any]:
        """The refs past their expiry at ``now`` (wall clock) that still wait, taken off the heap."""
        heap = self.heap
        out = []
        while heap and heap[0][0] <= now:
            ref = heapq.heappop(heap)[1]
            if ref in still:
                out.append(ref)
        return out
