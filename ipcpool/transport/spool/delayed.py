"""Delayed messages on the spool: ``<group>/delayed/<dueMs>-<inbox>-<name>``, and a timer heap over them.

A message whose ``notBefore`` is ahead is claimed once like any other; the
worker that parses it hands it back (``Later``), and the supervisor renames it
from ``processing/`` into the group's ``delayed/`` folder under a name that
carries its due time (epoch milliseconds, rounded up: never early) and its
inbox. Nothing scans that folder while the supervisor runs: a heap per group,
ordered by due time, says what is next, and the loop looks only at each heap's
head. A restart rebuilds the heaps from one listing of each ``delayed/``: the
names say it all, no file is opened. At its due time a message is renamed back
into its inbox under its own name (a copy's name when that one is taken, as a
requeue does), with a modification time of now, and is claimed as a new arrival
(a message of a sequence joins the end of its line: ``ipcpool.ordering``); every rename is a no-replace
one, and one rename is the whole move, so a SIGKILL at any point leaves the
message in exactly one folder and it is handed out once.

``delayed/`` is the supervisor's (0700, or 2700 in shared mode): writers never
write there, so a name in it that does not parse (a hand, an old version) is
left alone and logged once.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import os
from collections.abc import Collection, Iterator

from ipcpool.message import format_for
from ipcpool.msgtime import LATEST, format_iso
from ipcpool.portable import rename_noreplace
from ipcpool.transport.spool.layout import (
    DELAYED,
    MESSAGES,
    PROCESSING,
    Folders,
    copy_name,
    is_message_name,
    split_name,
)

log = logging.getLogger(__name__)

MAX_MOVES = 256  # messages moved back per poll: 100,000 due in the same millisecond never stall the loop
RETRY_LATER = 1.0  # seconds before a move back that failed (EIO, a removed inbox) is tried again


def delayed_name(due_ms: int, key_name: str) -> str:
    """``<dueMs>-<inbox>-<file name>``: the due time first, so a listing is the timetable."""
    inbox, base = split_name(key_name)
    return f"{due_ms}-{inbox}-{base}"


LAST_DUE_MS = round(LATEST * 1000)  # the latest time an ISO-8601 notBefore can say, in ms


def parse_delayed(name: str, inboxes: Collection[str] = (MESSAGES,)) -> tuple[int, str] | None:
    """(due ms, the key it goes back under: ``name`` or ``<inbox>/name``), or None for a stranger.

    Only a name this module could have written parses: ASCII digits of a time an ISO string can hold, one
    of the group's inboxes (never ``..`` or ``acks``: the name is all that says where the file goes back),
    and a message file's name (``x.json``, ``x.msgpack``).
    """
    due, _, rest = name.partition("-")
    inbox, _, base = rest.partition("-")
    if not (due.isascii() and due.isdigit()) or int(due) > LAST_DUE_MS or inbox not in inboxes:
        return None
    if not is_message_name(base) or format_for(base) is None:
        return None
    return int(due), base if inbox == MESSAGES else f"{inbox}/{base}"


class DelayedFiles:
    """Per group, a heap of (due ms, file in ``delayed/``); moves in and out of the folder."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self.heaps: dict[str, list[tuple[int, str]]] = {}  # only groups holding something
        self._strangers: set[tuple[str, str]] = set()

    def load(self, group: str) -> int:
        """One listing of ``delayed/`` (a start, a new group): the heap, without opening a file; how many."""
        entries: list[tuple[int, str]] = []
        try:
            with os.scandir(self.folders.path(group, DELAYED)) as listing:
                for entry in listing:
                    parsed = parse_delayed(entry.name, self.folders.inboxes)
                    if parsed is None:
                        if (group, entry.name) not in self._strangers:
                            self._strangers.add((group, entry.name))
                            log.warning("not a delayed message's name group=%s file=%s: left alone in delayed/",
                                        group, entry.name)
                        continue
                    entries.append((parsed[0], entry.name))
        except FileNotFoundError:
            pass
        heapq.heapify(entries)
        if entries:
            self.heaps[group] = entries
        else:
            self.heaps.pop(group, None)
        return len(entries)

    def hold(self, group: str, key_name: str, until: float) -> None:
        """processing/<key> -> delayed/<dueMs>-<inbox>-<name>; OSError when it cannot be (the caller holds it
        another way): a name too long for the prefix, a twin already there, a failing disk."""
        due_ms = math.ceil(until * 1000)
        name = delayed_name(due_ms, key_name)
        if len(os.fsencode(name)) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long for delayed/", name)
        rename_noreplace(self.folders.path(group, PROCESSING, key_name), self.folders.path(group, DELAYED, name))
        heapq.heappush(self.heaps.setdefault(group, []), (due_ms, name))

    def due(self, now: float) -> Iterator[tuple[str, str]]:
        """Move what is due back into its inbox, at most MAX_MOVES; yields each (group, key) now queued."""
        now_ms = now * 1000
        moves = 0
        for group in list(self.heaps):
            heap = self.heaps[group]
            while heap and heap[0][0] <= now_ms and moves < MAX_MOVES:
                _due, name = heapq.heappop(heap)
                moves += 1
                key = self._release(group, name)
                if key is not None:
                    yield group, key
                elif os.path.lexists(self.folders.path(group, DELAYED, name)):
                    heapq.heappush(heap, (int(now_ms + RETRY_LATER * 1000), name))  # a failed move: later
            if not heap:
                del self.heaps[group]

    def next_due(self) -> float | None:
        """The earliest due time held, in seconds (one look at each holding group's heap head)."""
        return min(heap[0][0] for heap in self.heaps.values()) / 1000 if self.heaps else None

    def busy(self, now: float) -> bool:
        """More is due than one poll moved."""
        now_ms = now * 1000
        return any(heap[0][0] <= now_ms for heap in self.heaps.values())

    def _release(self, group: str, name: str) -> str | None:
        """delayed/<name> -> its inbox (under a copy's name when its own is taken); the key, or None."""
        parsed = parse_delayed(name, self.folders.inboxes)
        if parsed is None:
            return None
        key_name = parsed[1]
        source = self.folders.path(group, DELAYED, name)
        try:  # an arrival of now: a sequence's scan after a restart puts it where it joined its line, at its due time
            os.utime(source, follow_symlinks=False)
        except OSError:
            pass  # only that order after a restart is lost: it goes by its publish time then
        target = key_name
        for attempt in range(1, 100):
            try:
                rename_noreplace(source, self.folders.inbox_path(group, target))
                return target
            except FileExistsError:
                suffix = f"requeued{attempt}" if attempt < 10 else f"requeued{attempt}-{os.urandom(4).hex()}"
                inbox, base = split_name(key_name)
                copy = copy_name(base, suffix)
                target = copy if inbox == MESSAGES else f"{inbox}/{copy}"
            except FileNotFoundError:
                if os.path.lexists(source):  # the inbox itself was removed: recreated, and tried again later
                    self._recreate(group)
                return None
            except OSError as exc:
                log.error("cannot move a due message back group=%s file=%s: %s; retried in %gs",
                          group, name, exc, RETRY_LATER)
                return None
        return None

    def _recreate(self, group: str) -> None:
        try:
            self.folders.ensure_group(group)
        except Exception as exc:  # noqa: BLE001 - reported; the move is retried
            log.error("cannot recreate group %s's folders: %s", group, exc)

    def stats(self, group: str) -> tuple[int, str | None]:
        """(how many are held, when the next is due as ISO-8601 UTC or None)."""
        heap = self.heaps.get(group)
        if not heap:
            return 0, None
        return len(heap), format_iso(heap[0][0] / 1000)
