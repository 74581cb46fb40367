"""Sequences on Redis: an entry of a sequence is handed out only once it heads its line, whoever holds it.

Why a line per sequence in Redis, pushed by the publish script in the same step as the XADD: that makes
the line's order the stream's order, for every supervisor, whichever of them reads which entry (a lease
taken when an entry is read would let a later entry read by a faster supervisor run first). Only the head
may run, and an entry is held by one consumer, so at most one message of a sequence is in a handler in the
whole cluster. A completion does not touch the line (a worker's completion stays one fixed MULTI): a head no
longer in its stream is dropped by the next head check (``scripts.HEADS``), on any supervisor.

Entries read here that do not head their line wait in :attr:`Lines.waiting` (renewed with everything this
supervisor holds, no worker held); they are asked about again when one of ours in a line finishes, and
every :data:`RECHECK` seconds while any waits (another supervisor's head may finish).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, heads

Key = tuple[str, str]  # (group, entry id)

RECHECK = 0.1  # seconds between head checks while entries wait behind another supervisor's head
BATCH = 500  # entries one check asks about
MAX_WAITING = 10_000  # past this many waiting here, no more is read: the pool's room is no measure of them


class Lines:
    """This supervisor's entries of sequences: their keys, which wait, which were found to head their line."""

    def __init__(self, keys: Keys, scripts: Scripts) -> None:
        self.keys = keys
        self.scripts = scripts
        self.key_of: dict[Key, str] = {}  # every entry of a sequence held here
        self.waiting: OrderedDict[Key, None] = OrderedDict()  # not known to head its line yet
        self.heads: set[Key] = set()  # found heading its line: handed out, and again after a worker's death
        self.soon = False  # one of ours finished: its successor may be here
        self.next_check = 0.0

    def admit(self, key: Key, sequence: str | None) -> bool:
        """A read entry: True to queue it now (no sequence, or known to head its line), else it waits here."""
        if sequence is not None:
            self.key_of[key] = sequence
        elif key not in self.key_of:
            return True
        if key in self.heads:
            return True
        self.waiting[key] = None
        self.soon = True
        return False

    def finished(self, key: Key) -> None:
        """Done, dead-lettered or lost here: forgotten; the next of its line may be ours."""
        if self.key_of.pop(key, None) is not None:
            self.heads.discard(key)
            self.waiting.pop(key, None)
            self.soon = True

    def check(self, client: Any, now: float) -> list[Key]:
        """The waiting entries that head their lines now (moved out of ``waiting``), when it is time to ask."""
        if not self.waiting or not (self.soon or now >= self.next_check):
            return []
        self.soon = False
        self.next_check = now + RECHECK
        asked = [key for key, _ in zip(self.waiting, range(BATCH), strict=False)]
        verdicts = heads(self.scripts, self.keys, [(g, self.key_of[(g, e)], e) for g, e in asked], client=client)
        ready = [key for key, verdict in zip(asked, verdicts, strict=True) if int(verdict)]
        for key in ready:
            del self.waiting[key]
            self.heads.add(key)
        return ready

    def waiting_by_group(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for group, _entry in self.waiting:
            counts[group] = counts.get(group, 0) + 1
        return counts
