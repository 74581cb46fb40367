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

A waiting entry past its ``expiresAt`` leaves :attr:`Lines.waiting` and is handed out out of turn (never as a
head: ``ipcpool.ordering``); the worker dead-letters it as expired, which takes it out of its stream, and
the head check drops it from its Redis line when it comes to the front, as it drops any finished head.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ipcpool.ordering import Expiries
from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, heads

Key = tuple[str, str]  # (group, entry id)

RECHECK = 0.1  # seconds between head checks while entries wait behind another supervisor's head
BATCH = 500  # entries one check asks about
MAX_WAITING = 10_000  # past this many waiting here, no more is read: the pool's room is no measure of them


class Lines:
    """This supervisor's entries of sequences: their keys, which wait, which were found to head their line.

    Only the first entry waiting here of each sequence is asked about (the others cannot head a line it is
    ahead of, in stream order), and none of a sequence whose head is handed out here: a check costs a few
    list lookups however long the lines are.
    """

    def __init__(self, keys: Keys, scripts: Scripts) -> None:
        self.keys = keys
        self.scripts = scripts
        self.key_of: dict[Key, str] = {}  # every entry of a sequence held here
        self.waiting: dict[Key, None] = {}  # not known to head its line yet
        self.queues: dict[tuple[str, str], deque[Key]] = {}  # (group, sequence key) -> its waiting, in stream order
        self.heads: set[Key] = set()  # found heading its line: handed out, and again after a worker's death
        self.busy: set[tuple[str, str]] = set()  # sequences whose head is one of ours
        self.soon = False  # one of ours finished: its successor may be here
        self.expiries = Expiries()  # waiting entries with an expiresAt: handed out out of turn once past it
        self.out_of_turn: set[Key] = set()  # expired while waiting: queued again (a worker died) out of turn
        self.next_check = 0.0

    def admit(self, key: Key, sequence: str | None, expires: float | None = None) -> bool:
        """A read entry: True to queue it now (no sequence, or known to head its line), else it waits here
        (``expires``: its expiresAt, to hand it out out of turn once past it)."""
        if sequence is not None:
            self.key_of[key] = sequence
        elif key not in self.key_of:
            return True
        if key in self.heads:
            return True
        if key in self.out_of_turn:  # expired while it waited here: never waits again
            return True
        if key not in self.waiting:
            self.waiting[key] = None
            line = self.queues.setdefault((key[0], self.key_of[key]), deque())
            line.append(key)
            if len(line) > 1 and _order(line[-2][1]) > _order(key[1]):  # a reclaim brought an older one
                line = self.queues[(key[0], self.key_of[key])] = deque(sorted(line, key=lambda k: _order(k[1])))
            if expires is not None:
                self.expiries.add(expires, key, self.waiting)
        self.soon = True
        return False

    def finished(self, key: Key) -> None:
        """Done, dead-lettered or lost here: forgotten; the next of its line may be ours."""
        sequence = self.key_of.pop(key, None)
        if sequence is None:
            return
        self.soon = True
        if self.out_of_turn:
            self.out_of_turn.discard(key)
        if key in self.heads:
            self.heads.discard(key)
            self.busy.discard((key[0], sequence))
        if self.waiting.pop(key, None) is not None:
            line = self.queues[(key[0], sequence)]
            line.remove(key)
            if not line:
                del self.queues[(key[0], sequence)]

    def expired(self, now: float) -> list[Key]:
        """Waiting entries past their expiresAt at ``now`` (wall clock), out of ``waiting`` (still of their
        sequence here, never its head): to queue at once, out of turn."""
        if not self.expiries.heap or self.expiries.heap[0][0] > now:
            return []
        out = self.expiries.due(now, self.waiting)
        self.out_of_turn.update(out)
        for key in out:
            del self.waiting[key]
            seq = (key[0], self.key_of[key])
            line = self.queues[seq]
            line.remove(key)
            if not line:
                del self.queues[seq]
        return out

    def check(self, client: Any, now: float) -> list[Key]:
        """The waiting entries that head their lines now (moved out of ``waiting``), when it is time to ask."""
        if not self.waiting or not (self.soon or now >= self.next_check):
            return []
        self.soon = False
        self.next_check = now + RECHECK
        asked = [line[0] for seq, line in self.queues.items() if seq not in self.busy][:BATCH]
        if not asked:
            return []
        verdicts = heads(self.scripts, self.keys, [(g, self.key_of[(g, e)], e) for g, e in asked], client=client)
        ready = [key for key, verdict in zip(asked, verdicts, strict=True) if int(verdict)]
        for key in ready:
            seq = (key[0], self.key_of[key])
            del self.waiting[key]
            line = self.queues[seq]
            line.popleft()
            if not line:
                del self.queues[seq]
            self.heads.add(key)
            self.busy.add(seq)
        return ready

    def drop_waiting(self) -> list[Key]:
        """Everything waiting here, forgotten (a drain hands it back)."""
        waiting = list(self.waiting)
        for key in waiting:
            self.finished(key)
        return waiting

    def waiting_by_group(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for group, _entry in self.waiting:
            counts[group] = counts.get(group, 0) + 1
        return counts


def _order(entry: str) -> tuple[int, int]:
    """A stream entry id's place in its stream (``<ms>-<seq>`` compared as numbers)."""
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)
