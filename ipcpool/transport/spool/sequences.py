"""The spool's sequences: the key of a file that can have one, read before it is claimed, and scan order.

The :class:`~ipcpool.ordering.Sequencer` keeps each sequence's line; this module is what the spool adds:
which files can have a key (their group orders, or their name has the mark: ``ipcpool.ordering``), reading
that key from the inbox, and the order a scan offers files in (modification time, then name), which is the
publish order after a restart or a rescan. A file found in ``processing/`` at start was some sequence's head
(only heads are claimed): it is offered before any scan, so a redelivery goes before what is behind it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Container

from ipcpool.config import Config
from ipcpool.errors import InvalidMessage
from ipcpool.message import format_for
from ipcpool.ordering import MARK, Expiries, Rule, Sequencer, expiry_of_bytes, key_of_bytes, rules_of
from ipcpool.transport.spool.reads import Reader

log = logging.getLogger(__name__)

Key = tuple[str, str]

HAND_OUT, WAIT, SETTLE = "hand out", "wait", "settle"


class SpoolSequences:
    """What the spool source asks before it claims a file that can be in a sequence."""

    def __init__(self, config: Config, reader: Reader) -> None:
        self.rules: dict[str, Rule] = rules_of(config)
        self.settle_time = config.spool.settle_time
        self.reader = reader
        self.lines = Sequencer()
        self.expiries = Expiries()  # waiting files with an expiresAt: handed out out of turn once past it
        self.out_of_turn: set[Key] = set()  # taken out of their lines expired: handed out, never lined up again

    def can_order(self, key: Key) -> bool:
        """Whether ``key`` may be in a sequence: the one test every file pays (a set and a substring)."""
        return key[0] in self.rules or MARK in key[1]

    def admit(self, key: Key) -> str:
        """HAND_OUT (unordered, or its sequence's free head), WAIT (behind a busy head: kept in its line) or
        SETTLE (its key cannot be read yet: a direct writer may still be writing)."""
        lines = self.lines
        seq = lines.seq_of.get(key)
        expires = None
        if seq is None:
            if key in self.out_of_turn:
                self.out_of_turn.discard(key)
                return HAND_OUT
            try:
                ordering_key, expires = self._read_key(key)
            except FileNotFoundError:
                return HAND_OUT  # gone: the claim finds out
            except (InvalidMessage, OSError) as exc:
                if self._still_changing(key):
                    return SETTLE
                log.debug("no ordering key for group=%s file=%s (%s): handed out unordered", key[0], key[1], exc)
                return HAND_OUT  # never will decode: the worker dead-letters it
            if ordering_key is None:
                return HAND_OUT
            seq = (key[0], ordering_key)
        if lines.admit(key, seq):
            return HAND_OUT
        if expires is not None and key in lines.waiting:
            self.expiries.add(expires, key, lines.waiting)
        return WAIT

    def expired(self, now: float) -> list[Key]:
        """Waiting files past their expiresAt at ``now`` (wall clock), out of their lines: to hand out first,
        out of turn (the worker dead-letters them as expired; their heads are untouched)."""
        if not self.expiries.heap or self.expiries.heap[0][0] > now:
            return []
        out = [key for key in self.expiries.due(now, self.lines.waiting) if self.lines.out_of_turn(key)]
        self.out_of_turn.update(out)
        return out

    def _read_key(self, key: Key) -> tuple[str | None, float | None]:
        group, name = key
        data = self.reader.read_queued(group, name).data
        fmt = format_for(name)
        return key_of_bytes(data, fmt, self.rules.get(group)), expiry_of_bytes(data, fmt)

    def _still_changing(self, key: Key) -> bool:
        try:
            mtime = os.stat(self.reader.folders.inbox_path(*key)).st_mtime
        except OSError:
            return False
        return time.time() - mtime < self.settle_time

    def scan_order(self, group: str, names: list[str], known: Container[Key] = ()) -> list[str]:
        """A scan's names, those that can be in a sequence by modification time then name (publish order as
        the disk keeps it), after the others (whose order means nothing). Names already ``known`` to the
        source or waiting in a line are left out unlooked-at: a stuck head with 50,000 files behind it once
        cost a stat of each at every rescan."""
        if group in self.rules:
            ordered, rest = names, []
        else:
            ordered = [n for n in names if MARK in n]
            if not ordered:
                return names
            rest = [n for n in names if MARK not in n]
        in_line = self.lines.seq_of
        ordered = [n for n in ordered if (group, n) not in known and (group, n) not in in_line]
        inbox_path = self.reader.folders.inbox_path
        stamped = []
        for name in ordered:
            try:
                stamped.append((os.stat(inbox_path(group, name)).st_mtime_ns, name))
            except OSError:
                continue  # gone meanwhile
        stamped.sort()
        return rest + [name for _mtime, name in stamped]
