"""The spool's supervisor side: which files are waiting, which are claimed, and the safety nets.

Every message the supervisor knows of is in exactly one place here:
``pending`` (seen in an inbox, not claimed; oldest first), ``taken`` (claimed
into processing/, in the pool's hands), ``settling`` (did not decode yet: a
direct writer may still be writing; offered again when due) or ``stranded``
(a transition failed; retried every second). A name re-published while its
namesake is taken or stranded waits in ``blocked`` and is offered once that
one is done. ``unclaimable`` remembers renames the filesystem refused, so each
is logged once per rescan.

Events are hints, the directory is the truth: the watcher's hints feed
``pending``; every ``rescan_interval``, and at once after an inotify
overflow, every group is rescanned in short slices (a thousand groups never
hold a new message back by more than a slice), and so is housekeeping.

It is a little over 500 lines on purpose: every place a message can be on
the supervisor's side lives in this one class, so each transition is one
method that sees them all (what stands apart does: housekeeping.py, layout.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import SpoolError
from ipcpool.message import Summary, format_for, summarize_bytes
from ipcpool.ordering import MARK
from ipcpool.transport.base import AckHeld, DeadLetterLater, Unfinished
from ipcpool.transport.spool.delayed import DelayedFiles
from ipcpool.transport.spool.housekeeping import SLICE, prune_steps, run_slice
from ipcpool.transport.spool.layout import (
    ERRORS,
    PROCESSING,
    is_message_name,
    message_stem,
)
from ipcpool.transport.spool.ledgerclock import LedgerClock
from ipcpool.transport.spool.sequences import HAND_OUT, SETTLE, SpoolSequences
from ipcpool.transport.spool.spool import Spool
from ipcpool.transport.spool.stranded import ACK, QUARANTINE, REQUEUE, RETRY_INTERVAL, Stranded
from ipcpool.transport.spool.watcher import CLOSED, FILE, GROUP, LOST, OVERFLOW, Hint, make_watcher

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (group, name): a file's name in messages/, or "tasks/<name>"
LOOKAHEAD = 256  # files one take() may put in line behind busy sequences (each is read): the loop never stalls


class SpoolSource:
    """The supervisor's view of one spool root (see the module docstring)."""

    backend = "spool"

    def __init__(self, config: Config, *, clock: Callable[[], float], on_hint: Callable[[], None]) -> None:
        self.config = config
        self.clock = clock
        self._wake = on_hint  # the polling watcher's thread: wake the supervisor's loop
        self.spool = Spool.from_config(config)
        self.pending: OrderedDict[Key, float] = OrderedDict()
        self.taken: set[Key] = set()
        self.blocked: set[Key] = set()
        self.unclaimable: set[Key] = set()
        self.settling: dict[Key, float] = {}
        self.failures: dict[Key, list[dict[str, Any]]] = {}
        self.stranded = Stranded(self.spool, self._requeue_stranded)
        self.delayed = DelayedFiles(self.spool.folders)  # notBefore ahead: delayed/ and its timer heaps
        self.groups: set[str] = set()
        self.refused_groups: set[str] = set()  # folders strict_groups keeps out (each logged once)
        self.unserved: dict[str, str] = {}  # group -> why its folder cannot be served (another user's, ...)
        self.errors_cache: dict[str, tuple[int, int]] = {}  # group -> (errors/ mtime, quarantined count)
        self.rescan_queue: deque[str] = deque()
        self.untracked: dict[str, set[str]] = {}  # group -> names in processing/ nothing tracked at its last rescan
        self._hints: deque[Hint] = deque()
        self._watcher: Any = None
        self._watcher_fds: tuple[int, ...] = ()
        self._housekeeping: Iterator[None] | None = None
        self._live_pids: set[int] = set()
        self._ledger_clock: LedgerClock | None = None  # the acks' pruning clock, made at open()
        self.next_rescan = 0.0
        self.next_stranded_retry = 0.0
        self.sequences = SpoolSequences(config, self.spool.reader)  # ordered messages' lines (ipcpool.ordering)
        self._waiting = self.sequences.lines.waiting  # behind a busy head: not offered again by a rescan
        self._in_line = self.sequences.lines.seq_of  # every message of a sequence this supervisor knows
        self._lined_up_more = False  # take() stopped putting files in line: more to look at, at once

    # -- the Source interface ----------------------------------------------------------------------

    def open(self) -> int:
        spool = self.spool
        spool.folders.ensure_root()
        self._ledger_clock = LedgerClock(spool.folders.state_dir, self.config.ack.retention)
        for group in self.config.spool.groups:
            self._ensure_group(group)
        self.failures = spool.deliveries.load()
        recovered = sum(self._reconcile(group) for group in spool.folders.list_groups() if group not in self.unserved)
        self._watcher = make_watcher(str(spool.root), self._on_hint,
                                     polling=self.config.spool.watcher == "polling",
                                     poll_interval=min(1.0, self.config.spool.rescan_interval),
                                     inboxes=self.config.spool.inboxes)
        self._watcher.start()
        fd = self._watcher.fileno()
        self._watcher_fds = () if fd is None else (fd,)
        for group in spool.folders.list_groups():
            self.add_group(group)
        self.next_rescan = self.clock() + self.config.spool.rescan_interval
        return recovered

    def filenos(self) -> list[int]:
        """The watcher's descriptor (inotify), if it has one (an observer's thread wakes the loop instead)."""
        return list(self._watcher_fds)

    def poll(self, now: float, ready: Collection[int] = (), room: int = 0) -> bool:
        """Take in the watcher's events, then offers, retries, rescans and pruning, in slices; True while sliced
        work is left (``room`` means nothing here: the inboxes are the backlog)."""
        if self._watcher is not None and any(fd in ready for fd in self._watcher_fds):
            self._hints.extend(self._watcher.read())
        self._drain_hints(now)
        if self.settling:
            for key, due in list(self.settling.items()):
                if now >= due:
                    del self.settling[key]
                    self.pending.setdefault(key, now)
        delayed_left = False
        if self.delayed.heaps:
            wall = time.time()  # notBefore is wall-clock time
            for key in list(self.delayed.due(wall)):
                self.offer(*key, now)
            delayed_left = self.delayed.busy(wall)  # more is due than one poll moves: come straight back
        if self.sequences.expiries.heap:
            for key in self.sequences.expired(time.time()):  # expiresAt is wall-clock time
                self.pending[key] = now
                self.pending.move_to_end(key, last=False)  # out of turn: the worker dead-letters it expired
        if self.stranded and now >= self.next_stranded_retry:
            self.next_stranded_retry = now + RETRY_INTERVAL
            self._retry_stranded()
        if now >= self.next_rescan:
            self.next_rescan = now + self.config.spool.rescan_interval
            self.rescan()
        if self.rescan_queue:
            self._continue_rescan()
        if self._housekeeping is not None:
            self._continue_housekeeping()
        more, self._lined_up_more = self._lined_up_more, False
        return (more or bool(self.rescan_queue) or self._housekeeping is not None or bool(self._hints)
                or delayed_left)

    def backlog(self) -> int:
        return len(self.pending)

    def wake_at(self) -> float | None:
        due, expires = self.delayed.next_due(), self.sequences.expiries.next_at()
        return due if expires is None else expires if due is None else min(due, expires)

    def take(self, n: int) -> list[tuple[str, str, int]]:
        """Claim the oldest; a file that can be in a sequence is first admitted by its line (it may wait).
        At most LOOKAHEAD files are put in line per call (each is read): a long fifo backlog is sorted in
        slices, and poll() says to come back at once."""
        taken: list[tuple[str, str, int]] = []
        pending = self.pending
        ordered_groups = self.sequences.rules
        lookahead = LOOKAHEAD
        while n > 0 and pending:
            key, _seen = pending.popitem(last=False)
            if key in self.taken:
                self.blocked.add(key)
                continue
            if key[0] in ordered_groups or MARK in key[1]:
                if not self._admitted(key):
                    lookahead -= 1
                    if not lookahead:
                        self._lined_up_more = True
                        break
                    continue
            elif not self._claim(key):
                continue
            self.taken.add(key)
            history = self.failures.get(key)
            taken.append((key[0], key[1], len(history) + 1 if history else 1))
            n -= 1
        return taken

    def done(self, group: str, ref: str, unfinished: Unfinished | None = None) -> None:
        key = (group, ref)
        self.taken.discard(key)
        if key in self._in_line:
            self._next_in_line(key)
        if key in self.failures:
            del self.failures[key]
            self.spool.deliveries.drop(*key)
        if isinstance(unfinished, AckHeld):
            self._ack_held((group, unfinished.hold), unfinished.message_id)
        elif isinstance(unfinished, DeadLetterLater):
            self.stranded.add(key, QUARANTINE, unfinished.error, errno_=unfinished.errno, record=unfinished.record,
                              nack=unfinished.nack)
        self._unblock(key)

    def requeue(self, group: str, ref: str, *, later: float = 0.0) -> None:
        key = (group, ref)
        self.taken.discard(key)
        try:
            back = self._requeue(key)
        except OSError as exc:
            self.stranded.add(key, REQUEUE, exc)
        else:
            if back is not None:
                if later:
                    self.pending.pop(back, None)
                    self.settling[back] = self.clock() + later
                else:
                    self.pending[back] = self.clock()
        self._unblock(key)

    def delay(self, group: str, ref: str, until: float) -> None:
        """Into delayed/ until due (see delayed.py); a name that cannot go there waits as a settling file does,
        in memory and in processing/ (a restart finds it there, and its worker hands it back again).

        A message of a sequence steps out of its line either way, and the sequence goes on: once due it comes
        back as a new arrival and joins the end of its line (it takes its place at its due time)."""
        key = (group, ref)
        try:
            self.delayed.hold(group, ref, until)
        except OSError as exc:
            log.warning("cannot hold a delayed message in delayed/ (%s); it waits in memory group=%s file=%s",
                        exc, group, ref)
            self._next_in_line(key)
            self.requeue(group, ref, later=max(until - time.time(), 0.001))
            return
        self.taken.discard(key)
        self._next_in_line(key)
        if self.failures.pop(key, None) is not None:  # its poison count starts again when it is due
            self.spool.deliveries.drop(*key)
        self._unblock(key)

    def record_failure(self, group: str, ref: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
        history = self.failures.setdefault((group, ref), [])
        history.append(entry)
        return list(history)

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None) -> bool:
        key = (group, ref)
        self.taken.discard(key)
        try:
            self.spool.dead.quarantine(group, ref, record, nack=nack)
        except FileNotFoundError:
            done = False
        except OSError as exc:
            self.stranded.add(key, QUARANTINE, exc, record=record, nack=nack)
            self._next_in_line(key)  # its sequence moves on: it is bound for errors/, not for a handler
            return False  # its history stays until the move is made
        else:
            done = True
        self.failures.pop(key, None)
        self.spool.deliveries.drop(*key)
        self._next_in_line(key)
        self._unblock(key)
        return done

    def summarize(self, group: str, ref: str) -> Summary:
        try:
            data = self.spool.reader.read_claimed(group, ref).data
        except Exception:  # noqa: BLE001 - unreadable or refused: only the name speaks for it
            data = b""
        return summarize_bytes(data, format_for(ref), message_stem(ref))

    def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Nothing to renew: one supervisor per root, by the lock."""

    def housekeeping(self, live_pids: set[int] | None = None) -> None:
        if live_pids is not None:
            self._live_pids = live_pids
        if self._housekeeping is None:
            self._housekeeping = self._prune()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        groups: dict[str, dict[str, Any]] = {
            g: {"queued": 0, "errors": self.errors_cache.get(g, (0, 0))[1], "oldestQueuedAge": None,
                **dict(zip(("delayed", "nextDue"), self.delayed.stats(g), strict=True))}
            for g in sorted(self.groups)
        }
        for (group, _name), seen in self.pending.items():
            entry = groups.get(group)
            if entry is not None:
                entry["queued"] += 1
                if entry["oldestQueuedAge"] is None:
                    entry["oldestQueuedAge"] = round(now - seen, 3)
        for group, waiting in self.sequences.lines.waiting_by_group().items():
            entry = groups.get(group)
            if entry is not None:  # queued all the same, behind a busy sequence
                entry["queued"] += waiting
                entry["waiting"] = waiting
        errors = [e.error for e in self.stranded.entries.values()]
        trouble = {"full": self.stranded.no_space, "stranded": len(self.stranded), "ackHolds": self.stranded.ack_holds,
                   "error": errors[0] if errors else None, "unservedGroups": dict(sorted(self.unserved.items())),
                   **(self.spool.folders.free_space() or {})}
        return {"groups": groups, "transport": trouble}

    def announce(self, status: dict[str, Any]) -> None:
        """One supervisor per root: status.json says it all."""

    @property
    def sequenced(self) -> dict[Key, Any]:
        return self._in_line

    @property
    def holds_acks(self) -> bool:
        """Handled messages wait for their acks: workers' ack checks must look for the held files too."""
        return bool(self.stranded.ack_holds)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    # -- boot ---------------------------------------------------------------------------------------------

    def _reconcile(self, group: str) -> int:
        """After a crash, everything in processing/ goes back (not held against it); returns how many.

        Handled messages kept for an ack that could not be written get it now.
        """
        for held in self.spool.claims.ack_holds(group):
            self._ack_held((group, held), None)
        recovered = 0
        for name in self.spool.folders.scan_processing(group):
            key = (group, name)
            try:
                back = self._requeue(key)
            except OSError as exc:
                self.stranded.add(key, REQUEUE, exc)
                continue
            if back is not None:
                self.pending[back] = self.clock()
                recovered += 1
                log.warning("Recovered message from processing/ after restart group=%s file=%s", group, name)
        return recovered

    # -- watcher hints and scans ---------------------------------------------------------------------------

    def _on_hint(self, hint: Hint) -> None:
        """The polling watcher's thread: enqueue and wake, nothing else."""
        self._hints.append(hint)
        self._wake()

    def _drain_hints(self, now: float) -> None:
        hints = self._hints
        while hints:
            kind, group, name = hints.popleft()
            if kind in (FILE, CLOSED):
                if group in self.groups and name is not None:
                    self.offer(group, name, now, closed=kind == CLOSED)
            elif kind == GROUP and group is not None:
                if self.spool.folders.is_group_dir(group):
                    self.add_group(group)
            elif kind == OVERFLOW:
                if self.next_rescan > 0.0:  # one line per overflow, however many watches saw it
                    log.warning("filesystem events were lost (inotify overflow); rescanning now")
                self.next_rescan = 0.0
            elif kind == LOST and group is not None:
                self.groups.discard(group)
                if self._watcher is not None:
                    self._watcher.unwatch_group(group)
                self.next_rescan = 0.0

    def offer(self, group: str, name: str, now: float, *, closed: bool = False) -> None:
        """A file may be ready in an inbox: queue it unless it is already known."""
        if not is_message_name(name):
            return
        key = (group, name)
        if key in self._waiting:
            return
        if key in self.settling:
            if not closed:
                return
            del self.settling[key]
        if key in self.taken or key in self.stranded:
            self.blocked.add(key)
        elif key not in self.pending:
            self.pending[key] = now

    def add_group(self, group: str) -> None:
        if group in self.groups:
            return
        spool_config = self.config.spool
        if spool_config.strict_groups and group not in spool_config.groups:
            if group not in self.refused_groups:
                self.refused_groups.add(group)
                log.warning("ignoring group folder %s: it is not in [spool] groups and [spool] strict_groups is on",
                            group)
            return
        if not self._ensure_group(group):
            return
        self.groups.add(group)
        self.delayed.load(group)
        if self._watcher is not None:
            self._watcher.watch_group(group)
        self._scan_group(group)
        self._count_errors(group)

    def _ensure_group(self, group: str) -> bool:
        """The group's folders, as they must be; False (and reported, once per change) when they cannot be:
        that group only waits, the others are served, and it is tried again at each rescan."""
        try:
            self.spool.folders.ensure_group(group)
        except (SpoolError, OSError) as exc:
            reason = str(exc)
            if self.unserved.get(group) != reason:  # logged when it changes, not at every rescan
                log.warning("not serving group %s: %s (the other groups are served; retried at each rescan)",
                            group, reason)
            self.unserved[group] = reason
            return False
        if self.unserved.pop(group, None) is not None:
            log.info("serving group %s now: its folder was fixed", group)
        return True

    def _scan_group(self, group: str) -> None:
        now = self.clock()
        try:
            names = self.spool.folders.scan_inboxes(group)
        except OSError as exc:
            log.error("cannot scan group %s: %s", group, exc)
            return
        for name in self.sequences.scan_order(group, names, self.pending):
            self.offer(group, name, now)

    def rescan(self) -> None:
        """Start a rescan: new groups now, every group's inboxes in slices."""
        self.unclaimable.clear()  # retried (and logged again) at most once per rescan
        listed = self.spool.folders.list_groups()
        for group in listed:
            if group not in self.groups:
                self.add_group(group)
            else:
                self.rescan_queue.append(group)
        for group in set(self.unserved) - set(listed):
            del self.unserved[group]  # its folder is gone: nothing waits there any more

    def _continue_rescan(self) -> None:
        """Scan queued groups for at most SLICE seconds, so a thousand groups never stall the loop."""
        deadline = time.monotonic() + SLICE
        queue = self.rescan_queue
        while queue and time.monotonic() < deadline:
            group = queue.popleft()
            if group in self.groups:
                self._scan_group(group)
                self._count_errors(group)
                self._put_back_untracked(group)

    def _put_back_untracked(self, group: str) -> None:
        """The directory is the truth for processing/ too: a file there that nothing tracks (neither claimed
        for a worker nor stranded) at two rescans in a row was left by a transition that failed half done
        (a fault the loop survived, or a hand): it goes back to its inbox."""
        try:
            names = self.spool.folders.scan_processing(group)
        except OSError:
            return
        untracked = {name for name in names if (group, name) not in self.taken and (group, name) not in self.stranded}
        seen_before = self.untracked.get(group, set())
        self.untracked[group] = untracked - seen_before
        for name in untracked & seen_before:
            log.warning("untracked message in processing/ group=%s file=%s (a transition was left half done); "
                        "putting it back", group, name)
            try:
                self._requeue_stranded((group, name))
            except OSError as exc:
                self.stranded.add((group, name), REQUEUE, exc)

    def _count_errors(self, group: str) -> int:
        """Quarantined messages in a group, recounted (during rescans) only when the folder changed."""
        path = self.spool.folders.path(group, ERRORS)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return 0
        cached = self.errors_cache.get(group)
        if cached and cached[0] == mtime:
            return cached[1]
        count = self.spool.folders.count_dead_letters(group)
        self.errors_cache[group] = (mtime, count)
        return count

    # -- moving files -------------------------------------------------------------------------------------------

    def _claim(self, key: Key) -> bool:
        """Rename into processing/; a file that cannot be claimed never stops the loop."""
        try:
            return self.spool.claims.claim(*key)
        except FileExistsError:
            if key in self.stranded:  # its namesake in processing/ is being retried: this one waits for it
                self.blocked.add(key)
                return False
            # An untracked file in processing/ under this name (put there by hand?):
            # put it back beside the new one, and claim both in turn.
            log.warning("stranded file in processing/ group=%s file=%s; requeueing it", *key)
            try:
                back = self._requeue(key)
            except OSError as exc:
                self.stranded.add(key, REQUEUE, exc)
            else:
                if back is not None and back != key:
                    self.pending[back] = self.clock()
            self.pending[key] = self.clock()
            return False
        except OSError as exc:
            if key not in self.unclaimable:
                log.error("cannot claim group=%s file=%s: %s; leaving it in messages/", key[0], key[1], exc)
            self.unclaimable.add(key)
            return False

    def _requeue(self, key: Key) -> Key | None:
        """processing/ -> its inbox; the key it now has (renamed if its name was taken), or None if gone.

        A message's delivery history follows it (and is saved: a restart must
        not forget how often it killed a worker). Raises OSError when the
        rename fails; nothing has changed then.
        """
        name = self.spool.claims.requeue(*key)
        if name is None:
            if self.failures.pop(key, None) is not None:  # it was handled after all
                self.spool.deliveries.drop(*key)
            self._next_in_line(key)
            return None
        back = (key[0], name)
        self.sequences.lines.back(key, back)  # still its sequence's head: it goes before what is behind it
        history = self.failures.pop(key, None)
        if history is not None:
            self.failures[back] = history
            try:
                if back != key:
                    self.spool.deliveries.drop(*key)
                self.spool.deliveries.save(back[0], back[1], history)
            except OSError as exc:
                log.warning("cannot save the delivery history of group=%s file=%s (%s); kept in memory",
                            back[0], back[1], exc)
        return back

    def _requeue_stranded(self, key: Key) -> None:
        """The stranded list's retry of a requeue (an OSError keeps it stranded)."""
        back = self._requeue(key)
        if back is not None:
            self.pending[back] = self.clock()

    def _ack_held(self, key: Key, message_id: str | None) -> None:
        """Write the ack of a handled message held in processing/, or keep trying."""
        try:
            self.spool.claims.release_ack_hold(key[0], key[1], message_id)
        except OSError as exc:
            self.stranded.add(key, ACK, exc, message_id=message_id or key[1][5:])
            return
        log.info("ACK written for a handled message that had to wait for it group=%s id=%s",
                 key[0], message_id or key[1])

    def _admitted(self, key: Key) -> bool:
        """Whether a file that can be in a sequence is claimed now: unordered, or its line's free head; else it
        waits in its line (or, its key not readable yet, settles). A head that cannot be claimed stays the head
        (offered again by the claim's own put-back or a rescan), unless it is gone: then its line moves on."""
        verdict = self.sequences.admit(key)
        if verdict is not HAND_OUT:
            if verdict is SETTLE:
                self.settling[key] = self.clock() + self.config.spool.settle_time
            return False
        if self._claim(key):
            return True
        if key in self.sequences.lines.seq_of:
            if os.path.lexists(self.spool.folders.inbox_path(*key)):
                self.sequences.lines.back(key, key)
            else:
                self._next_in_line(key)
        return False

    def _next_in_line(self, key: Key) -> None:
        """``key`` left its sequence (done, dead-lettered, gone): the next of its line is offered first."""
        head = self.sequences.lines.finish(key)
        if head is not None:
            self.pending[head] = self.clock()
            self.pending.move_to_end(head, last=False)

    def _unblock(self, key: Key) -> None:
        """A copy of this name waited in its inbox for this one to be done: offer it now."""
        if key in self.blocked and key not in self.taken and key not in self.stranded:
            self.blocked.discard(key)
            self.pending[key] = self.clock()

    def _retry_stranded(self) -> None:
        for key in self.stranded.retry():
            self.failures.pop(key, None)
            self._unblock(key)

    # -- housekeeping -------------------------------------------------------------------------------------------

    def _prune(self) -> Iterator[None]:
        """What outlived its retention (see housekeeping.py), then the histories of messages that are gone."""
        ledger_now = self._ledger_clock.now() if self._ledger_clock is not None else time.time()  # see LedgerClock
        yield from prune_steps(self.spool, self.config, self.groups, ledger_now, self._live_pids)
        self._forget_gone_deliveries()

    def _forget_gone_deliveries(self) -> None:
        """Delivery histories of messages no longer anywhere (an operator removed them) are dropped."""
        spool = self.spool
        for key in list(self.failures):
            if key in self.taken or key in self.stranded or key in self.pending:
                continue
            folders = spool.folders
            if not os.path.lexists(folders.inbox_path(*key)) and \
                    not os.path.lexists(folders.path(key[0], PROCESSING, key[1])):
                del self.failures[key]
                spool.deliveries.drop(*key)

    def _continue_housekeeping(self) -> None:
        assert self._housekeeping is not None
        if not run_slice(self._housekeeping):
            self._housekeeping = None
