"""The supervisor's side on Redis: take entries from the groups' streams, hold them under a lease.

- **Taking.** One blocking ``XREADGROUP ... BLOCK`` is kept outstanding on a
  connection of its own while the pool has room, for as many entries as it
  has room for; its socket is among what the supervisor's loop waits on
  (:meth:`RedisSource.filenos`), so a new entry reaches a worker without polling.
- **Leases, not visibility timeouts.** Every entry this supervisor holds
  (in a worker's hands or waiting here) is renewed each heartbeat interval
  (``XCLAIM`` to itself, ``JUSTID``: only entries it still owns), and first
  of all when it is back from an outage or a stall. A dead supervisor's
  entries are reclaimed by the others with ``XAUTOCLAIM`` once idle for
  ``[redis] lease``; nothing is locked, so a SIGKILL leaves nothing held. A
  restarted supervisor (the same consumer name: its host name and a random id
  kept on its root) takes back its own pending entries at once. An entry
  another supervisor took is logged once, no longer renewed, and never handed
  out here again.
- **No reclaims after an outage of everyone.** Each renewal also ticks a key
  that lives the lease less one and a half heartbeat intervals; a
  supervisor's reclaim finds it gone when nobody
  reached Redis for that long (Redis was down, stalled or restarted, or every
  supervisor was cut off): every entry's idle time then includes a time in
  which nobody could renew it, so no one reclaims for one lease, in which
  each live supervisor renews its own (``scripts.RECLAIM``: the check and the
  claim are one step). A supervisor's back-off between attempts is at most a
  quarter lease, so each is back in time.
- **Poison across hosts.** The deliveries that killed or hung a worker are a
  list in Redis per entry, so the count goes on wherever the entry goes.
- **Outages.** When Redis goes away the source stops handing out entries,
  logs once, retries with back-off; what cannot be finished now (an ack, a
  dead-lettering) is kept, on the local root too (:mod:`journal`: it
  survives a drain, a restart, a SIGKILL), and finished when Redis is back,
  before anything new is handed out; a start finishes what a previous run kept
  before it takes any work.
- **Files feed the cluster.** The local root's inboxes are watched by the
  bridge the factory hands this source (:mod:`ipcpool.transport.bridge`, the
  one module that knows both backends); this source only drives it from its
  poll, and never imports the spool.

Over 500 lines, on purpose: taking, leases, reclaims, recovery and outages
all act on the same sets of entries (queued here, handed out, held, lost,
waiting to be finished); split by verb, each part would reach into the
others' sets. What does stand alone is apart: the blocking read
(:mod:`reader`), the queue figures (:mod:`figures`), the consumer name
(:mod:`consumer`), the journal (:mod:`journal`).
"""

from __future__ import annotations

import json
import logging
import select
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

import redis.exceptions

from ipcpool.config import Config
from ipcpool.message import Summary, summarize_bytes
from ipcpool.transport.base import DeadLetterLater, Unfinished
from ipcpool.transport.redis.connection import UNAVAILABLE, Outage, connect
from ipcpool.transport.redis.consumer import consumer_name
from ipcpool.transport.redis.delays import DelayedSets
from ipcpool.transport.redis.figures import QueueFigures
from ipcpool.transport.redis.journal import Journal
from ipcpool.transport.redis.keys import CONSUMER_GROUP, Keys
from ipcpool.transport.redis.lines import MAX_WAITING, Lines
from ipcpool.transport.redis.reader import StreamReader, expiry_of, sequence_of
from ipcpool.transport.redis.scripts import Scripts, complete, quarantine
from ipcpool.transport.redis.store import _text

log = logging.getLogger(__name__)

MAX_READ = 256  # entries one read may take
RECLAIM_COUNT = 100
RECLAIM_PAGES = 20  # pages of RECLAIM_COUNT one reclaim goes through per group


class LocalInboxes(Protocol):
    """What this source asks of the bridge (``ipcpool.transport.bridge``), which the factory gives it."""

    def open(self) -> int: ...
    def attach(self, client: Any, keys: Keys, scripts: Scripts, consumer: str) -> int: ...
    def filenos(self) -> list[int]: ...
    def poll(self, now: float, ready: Collection[int]) -> bool: ...
    def forward(self, now: float) -> None: ...
    def groups(self) -> set[str]: ...
    def housekeeping(self, live_pids: set[int]) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class RedisSource:
    backend = "redis"

    def __init__(self, config: Config, *, clock: Callable[[], float], bridge: LocalInboxes) -> None:
        self.config = config
        self.clock = clock
        self.client = connect(config)
        self.keys = Keys(config.redis.prefix)
        self.scripts = Scripts(self.client)
        self.consumer = ""  # this root's consumer name, read (or made) by open(): the root is ours by then
        self.lease_ms = int(config.redis.lease * 1000)
        self.groups: set[str] = set()
        # Entries taken from Redis, not yet handed to a worker: an ordered set (an entry is never in it
        # twice, whichever way it came: a read, a reclaim, a recovery).
        self.queue: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.later: dict[tuple[str, str], float] = {}  # entries to hand out again, not before then
        self.failures: dict[tuple[str, str], int] = {}  # deliveries that killed a worker, as far as known here
        self.pending_work: dict[tuple[str, str], dict[str, Any]] = {}  # acks and dead-letterings to finish
        self.journal = Journal(config.spool.root, fsync=config.spool.durability == "power")  # pending_work, on disk
        # A quarter lease at most between attempts: after an outage each supervisor is back, and has renewed
        # what it holds, well within the lease in which no one may reclaim (see _reclaim).
        self.outage = Outage(config, "supervisor", cap=config.redis.lease / 4)
        # Nobody renewed for this long: reclaims wait a lease. Longer than renewals are ever apart (the lease
        # is at least 3 heartbeat intervals), and a live entry renewed just before such a gap stays below the lease.
        self.gap_ms = max(1, self.lease_ms - int(1.5 * config.heartbeat.interval * 1000))
        self.renew_every = config.heartbeat.interval
        self.renewed_at = float("-inf")  # when the last renewal Redis answered was sent
        self.held: set[tuple[str, str]] = set()  # what the pool's workers hold, as the supervisor last said
        self.lost: set[tuple[str, str]] = set()  # entries another supervisor took from this one (said once)
        self._holding = False  # reclaims are held back after a gap (said once per gap)
        self.room = 0
        self.reader = StreamReader(self.client, self.keys, int(min(config.spool.rescan_interval, 5.0) * 1000))
        self.out: set[tuple[str, str]] = set()  # handed to the pool and not given back yet
        self.figures = QueueFigures(self.client, self.keys)
        self.delays = DelayedSets(self.client, self.keys)  # notBefore ahead: each group's sorted set
        self._delayed_last: dict[str, dict[str, Any]] = {}  # the delayed figures last read
        self.bridge = bridge  # the local inboxes: files into the streams, their answers back beside them
        self._watch_fds: list[int] = []  # the local inboxes' watch (inotify), once open
        self.next_groups = 0.0
        self.next_reclaim = 0.0
        self._housekeeping = False
        self.lines = Lines(self.keys, self.scripts)  # entries of sequences: handed out only as their line's head

    # -- the Source interface -----------------------------------------------------------------------------------

    def open(self) -> int:
        self.bridge.open()  # the local root and its state folder exist from here on
        self.consumer = consumer_name(self.config.spool.root, fsync=self.config.spool.durability == "power")
        self.pending_work.update(self.journal.load())
        if self.pending_work:
            log.warning("%d acks or dead-letterings a previous run could not finish in Redis were kept in %s: "
                        "finishing them before taking any work", len(self.pending_work), self.journal.path)
        self._watch_fds = self.bridge.filenos()
        waiting = self.bridge.attach(self.client, self.keys, self.scripts, self.consumer)
        if waiting:
            log.info("%d bridged messages still wait for answers to write back beside their files", waiting)
        self._refresh_groups()
        if self.pending_work:
            self._finish_pending()  # its entries are this consumer's: recovered below unless finished here
        recovered = self._recover()
        self.next_reclaim = self.clock() + self.config.redis.lease / 2
        return recovered

    def filenos(self) -> list[int]:
        """The local inboxes' watch, and the socket of the read outstanding, if any: the loop waits on both."""
        return [*self._watch_fds, self.reader.fd] if self.reader.outstanding else list(self._watch_fds)

    def poll(self, now: float, ready: Collection[int] | None = None, room: int = 0) -> bool:
        """The read that came back, the local inboxes, renewals, reclaims, retries; then one read is kept
        outstanding for ``room`` (``ready`` None: look at each descriptor, without waiting). True while
        the local inboxes have work to come back for at once."""
        if ready is None:
            fds = self.filenos()
            ready = set(select.select(fds, [], [], 0)[0]) if fds else set()
        self.room = room
        if self.reader.outstanding and self.reader.fd in ready:
            self._read_reply()
        more = self.bridge.poll(now, ready)
        if self.outage.down and not self.outage.may_try():
            return more
        self._poll_redis(now)
        return more or (bool(self.delays.next_due) and time.time() >= self.delays.next_due)  # more due at once

    def _poll_redis(self, now: float) -> None:
        try:
            if self.outage.down or now - self.renewed_at > 2 * self.renew_every:
                self._renew(now)  # back from an outage or a stall: what this one holds is renewed first
            if self.outage.down:  # back: then what a read cut short may have taken, then new reads
                self._take_back_unknown()
            self.bridge.forward(now)
            if self.pending_work:
                self._finish_pending()
            if now >= self.next_groups:
                self.next_groups = now + self.config.spool.rescan_interval
                self._refresh_groups()
            if now >= self.next_reclaim:
                self.next_reclaim = now + self.config.redis.lease / 2
                self._reclaim()
            wall = time.time()  # notBefore is wall-clock time
            if self.delays.due(wall):
                self.delays.release(sorted(self.groups), wall)
            if self.later:
                for key, due in list(self.later.items()):
                    if now >= due:
                        del self.later[key]
                        self._enqueue(key)
            if self._housekeeping:
                self._housekeeping = False
                self._prune()
            for key in self.lines.check(self.client, now):
                self._enqueue(key)
            if self.lines.expiries.heap:
                for key in self.lines.expired(time.time()):  # expiresAt is wall-clock time
                    self.queue[key] = None
                    self.queue.move_to_end(key, last=False)  # out of turn: the worker dead-letters it expired
            self._issue_read()
        except UNAVAILABLE as exc:
            self._lost(exc)
            return
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups_gone(exc)
        self.outage.ok()

    def _groups_gone(self, exc: BaseException) -> None:
        """Redis answers NOGROUP: it came back without its data (no persistence, a failover to an empty
        replica, FLUSHALL). The consumer groups are made again, at once, so the loop goes on; entries held
        here that Redis no longer has end as vanished when a worker looks for them."""
        log.error("Redis has lost the consumer groups (%s): restarted without its data? Making them again; "
                  "messages it held are gone with them", exc)
        self.groups.clear()
        self.reader.drop()
        self._refresh_groups()
        self.next_groups = 0.0

    def backlog(self) -> int:
        return 0 if self.outage.down else len(self.queue)

    def wake_at(self) -> float | None:
        if self.outage.down:
            return None
        due, expires = self.delays.next_due or None, self.lines.expiries.next_at()
        return due if expires is None else expires if due is None else min(due, expires)

    def take(self, n: int) -> list[tuple[str, str, int]]:
        taken: list[tuple[str, str, int]] = []
        queue = self.queue
        while n > 0 and queue:
            key = queue.popitem(last=False)[0]
            self.out.add(key)
            taken.append((key[0], key[1], self.failures.get(key, 0) + 1))
            n -= 1
        return taken

    def done(self, group: str, ref: str, unfinished: Unfinished | None = None) -> None:
        key = (group, ref)
        self.out.discard(key)
        self.lost.discard(key)
        self.failures.pop(key, None)
        self.lines.finished(key)
        if unfinished is None:
            return
        if isinstance(unfinished, DeadLetterLater):  # the journal's shapes (kept across restarts, as JSON)
            self.pending_work[key] = {"quarantine": unfinished.record, "nack": unfinished.nack}
            what, message_id = "its dead-lettering", unfinished.record.get("id")
        else:
            self.pending_work[key] = {"ackHold": unfinished.hold, "id": unfinished.message_id,
                                      "name": unfinished.name, "error": unfinished.error}
            what, message_id = "its ACK", unfinished.message_id
        self.journal.save(self.pending_work)
        log.warning("IPC message finished, but Redis did not take %s: kept, and done as soon as it does "
                    "group=%s entry=%s id=%s", what, group, ref, message_id)

    def requeue(self, group: str, ref: str, *, later: float = 0.0) -> None:
        key = (group, ref)
        self.out.discard(key)
        if key in self.lost:  # another supervisor holds it now: not this one's to hand out again
            self.lost.discard(key)
            return
        if later:
            self.later[key] = self.clock() + later
        else:
            self.queue[key] = None
            self.queue.move_to_end(key, last=False)  # it was next once; it is next again

    def delay(self, group: str, ref: str, until: float) -> None:
        """Into the group's delayed set until due (see delays.py); with Redis away, held here in memory as a
        requeue for later is (still pending under this consumer: a restart recovers it, and it comes back).
        A message of a sequence leaves its line (the next may run) and joins its end again when it is due."""
        key = (group, ref)
        self.out.discard(key)
        self.failures.pop(key, None)
        if key in self.lost:  # another supervisor holds it now
            self.lost.discard(key)
            return
        try:
            self.delays.hold(group, ref, until)
        except UNAVAILABLE as exc:  # still in the stream: a sequence's line waits for it (Redis is away anyway)
            self._lost(exc)
            self.later[key] = self.clock() + max(until - time.time(), 0.001)
            return
        self.lines.finished(key)  # out of the stream: its line moves on; it joins the end when due (delays.py)

    def record_failure(self, group: str, ref: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
        key = self.keys.deliveries(group, ref)
        try:
            _, _, history = (self.client.pipeline(transaction=True).rpush(key, json.dumps(entry))
                             .expire(key, max(1, int(self.config.ack.retention))).lrange(key, 0, -1).execute())
            found = [json.loads(item) for item in history]
        except UNAVAILABLE as exc:
            self._lost(exc)
            found = [entry] * (self.failures.get((group, ref), 0) + 1)
        self.failures[(group, ref)] = len(found)
        return found

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None) -> bool:
        key = (group, ref)
        self.out.discard(key)
        self.failures.pop(key, None)
        if key in self.lost:  # another supervisor holds it now (this one was stalled): its to end, not ours
            self.lost.discard(key)
            log.warning("not dead-lettering group=%s entry=%s: another supervisor took it over meanwhile; its "
                        "deliveries are counted there", group, ref)
            return False
        self.lines.finished(key)
        try:
            return bool(self._dead_letter(group, ref, record, nack))
        except UNAVAILABLE as exc:
            self._lost(exc)
            self.pending_work[key] = {"quarantine": record, "nack": nack}
            self.journal.save(self.pending_work)
            return False

    def summarize(self, group: str, ref: str) -> Summary:
        try:
            entries = self.client.xrange(self.keys.stream(group), ref, ref)
        except UNAVAILABLE:
            entries = []
        if not entries:
            return summarize_bytes(b"", None, ref)
        fields = entries[0][1]
        fmt = _text(fields.get(b"f")) or None
        return summarize_bytes(fields.get(b"m") or b"", fmt, _text(fields.get(b"s")) or ref)

    def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Extend the lease on everything held here: in workers' hands, and waiting in this queue."""
        self.held = set(held)
        if self.outage.down and not self.outage.may_try():
            return
        try:
            self._renew(self.clock())
        except UNAVAILABLE as exc:
            self._lost(exc)

    def _renew(self, now: float) -> None:
        """One round trip: the tick (Redis was reached), and XCLAIM to itself of what this one still owns.

        Raises what Redis raises. An entry another supervisor took meanwhile is
        said once, dropped from what waits here, and not renewed again.
        """
        by_group: dict[str, list[str]] = {}
        for group, ref in {*self.held, *self.out, *self.queue, *self.later, *self.pending_work,
                           *self.lines.waiting} - self.lost:
            by_group.setdefault(group, []).append(ref)
        pipe = self.client.pipeline(transaction=False)
        self.scripts.tick(keys=[self.keys.alive, self.keys.reclaim_hold], args=[self.gap_ms, self.lease_ms],
                          client=pipe)
        for group, refs in by_group.items():
            self.scripts.renew(keys=[self.keys.stream(group)], args=[CONSUMER_GROUP, self.consumer, *refs],
                               client=pipe)
        results = pipe.execute()
        self.renewed_at = now
        for group, lost in zip(by_group, results[1:], strict=True):
            for ref in lost or ():
                self._lose((group, _text(ref)))

    def _lose(self, key: tuple[str, str]) -> None:
        """Another supervisor took this entry: said once; what waits here of it is not handed out."""
        if key in self.lost:
            return
        self.lost.add(key)
        waiting = key in self.queue or key in self.later or key in self.lines.waiting
        self.queue.pop(key, None)
        self.later.pop(key, None)
        self.lines.finished(key)
        log.error("lost the lease on group=%s entry=%s: another supervisor took it (this one was out of touch "
                  "longer than [redis] lease); %s", key[0], key[1],
                  "it is left to that one" if waiting else "its handler may run twice")

    def housekeeping(self, live_pids: set[int] | None = None) -> None:
        self.bridge.housekeeping(live_pids or set())
        self._housekeeping = True

    def stats(self) -> dict[str, Any]:
        """Each group's queue as Redis holds it, cluster-wide, plus what this supervisor read ahead
        (:mod:`figures`); none read while Redis is known to be away (the last figures stand)."""
        names = sorted(self.groups)
        buffered: dict[str, list[str]] = {g: [] for g in names}  # taken by this supervisor, not handed out yet
        for group, ref in (*self.queue, *self.later, *self.lines.waiting):  # waiting: read, behind a busy head
            if group in buffered:
                buffered[group].append(ref)
        groups = self.figures.read(names, buffered, skip=self.outage.down)
        for group, held in self._delayed_figures(names).items():
            groups.setdefault(group, {}).update(held)
        for group, waiting in self.lines.waiting_by_group().items():
            if group in groups:  # read here, waiting behind a busy sequence (queued all the same)
                groups[group]["waiting"] = waiting
        trouble = {"full": False, "stranded": len(self.pending_work), "ackHolds": 0,
                   "error": self.outage.describe(),
                   "consumer": self.consumer, "redisDown": self.outage.down, **self.bridge.stats()}
        return {"groups": groups, "transport": trouble}

    def _delayed_figures(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """How many each group holds delayed, and the next due (the last figures stand while Redis is away)."""
        if not self.outage.down:
            try:
                self._delayed_last = self.delays.figures(names)
            except UNAVAILABLE as exc:
                self._lost(exc)
        return self._delayed_last

    def announce(self, status: dict[str, Any]) -> None:
        """This supervisor's status, for `ipcpool status` on any host (it expires unless renewed)."""
        ttl = max(1, int(3 * self.config.heartbeat.interval) + 1)
        try:
            self.client.set(self.keys.supervisor(self.consumer), json.dumps(status, default=str), ex=ttl)
        except UNAVAILABLE as exc:
            self._lost(exc)

    @property
    def holds_acks(self) -> bool:
        return False

    @property
    def sequenced(self) -> dict[tuple[str, str], str]:
        return self.lines.key_of

    def close(self) -> None:
        """Hand back what no worker started: the others may take it at once, not after the lease.

        What is left to finish is tried once more (Redis may be back); what
        still is not stays in the journal for the next start.
        """
        if self.pending_work and not self.outage.down:
            try:
                self._finish_pending()
            except UNAVAILABLE:
                pass
        waiting = list(self.queue) + list(self.later) + self.lines.drop_waiting()
        self.queue.clear()
        self.later.clear()
        self._release(waiting)
        self.reader.drop()
        try:
            if self.consumer:
                self.client.delete(self.keys.supervisor(self.consumer))
        except UNAVAILABLE:
            pass
        self.bridge.close()
        self.client.close()

    # -- reading ----------------------------------------------------------------------------------------------

    def _issue_read(self) -> None:
        """Keep one blocking XREADGROUP outstanding while the pool has room and nothing waits here."""
        if self.reader.outstanding or not self.groups or self.room <= len(self.queue) or \
                len(self.lines.waiting) >= MAX_WAITING:
            return
        self.reader.issue(self.consumer, sorted(self.groups), min(MAX_READ, self.room - len(self.queue)))

    def _read_reply(self) -> None:
        try:
            taken = self.reader.read()
        except UNAVAILABLE as exc:
            self._lost(exc)
            return
        except redis.exceptions.ResponseError as exc:  # NOGROUP: a stream's consumer group went away
            log.warning("reading the streams failed (%s); recreating consumer groups", exc)
            self.groups.clear()
            self.next_groups = 0.0
            return
        for group, ref, sequence, expires in taken:
            self._enqueue((group, ref), sequence, expires)

    def _enqueue(self, key: tuple[str, str], sequence: str | None = None, expires: float | None = None) -> None:
        """Queued to hand out, unless an entry of a sequence not (yet) known to head its line: that waits."""
        if key not in self.out and key not in self.later and key not in self.pending_work and \
                self.lines.admit(key, sequence, expires):
            self.queue[key] = None

    def _take_back_unknown(self) -> None:
        """After an outage: entries Redis gave this consumer that it never heard of (a read cut short)."""
        known = self.out | set(self.queue) | set(self.later) | set(self.pending_work) | set(self.lines.waiting)
        before = len(self.queue)
        self._recover(skip=known)
        if len(self.queue) > before:
            log.warning("took back %d messages a read cut short by the outage had taken", len(self.queue) - before)

    def _recover(self, *, skip: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> int:
        """This consumer's own pending entries (a previous run of this supervisor): ours again, at once."""
        recovered = 0
        for group in sorted(self.groups):
            reply = self.client.xreadgroup(CONSUMER_GROUP, self.consumer, {self.keys.stream(group): "0"},
                                           count=100_000)
            for _stream, entries in reply or ():
                gone = [entry_id for entry_id, fields in entries if not fields]
                if gone:
                    self.client.xack(self.keys.stream(group), CONSUMER_GROUP, *gone)
                for entry_id, fields in entries:
                    key = (group, _text(entry_id))
                    if fields and key not in skip and key not in self.queue:
                        self.lost.discard(key)  # this consumer's again
                        sequence = sequence_of(fields)
                        self._enqueue(key, sequence, None if sequence is None else expiry_of(fields))
                        recovered += 1
        self._learn_failures([key for key in self.queue if key not in skip])
        if recovered and not skip:
            log.warning("Recovered %d messages this supervisor held before its restart", recovered)
        return recovered

    def _reclaim(self) -> None:
        """Entries of supervisors that stopped renewing them (dead, or cut off) longer than the lease.

        Unless Redis says nobody reached it lately (``scripts.RECLAIM``): then
        every supervisor's entries look idle, and each gets a lease to renew
        its own before anyone takes any.
        """
        claimed: list[tuple[str, str]] = []
        held_back = 0
        for group in sorted(self.groups):
            cursor: Any = "0-0"
            for _ in range(RECLAIM_PAGES):  # a dead supervisor may have held hundreds: all of them, now
                reply = self.scripts.reclaim(keys=[self.keys.alive, self.keys.reclaim_hold, self.keys.stream(group)],
                                             args=[self.gap_ms, self.lease_ms, CONSUMER_GROUP, self.consumer, cursor,
                                                   RECLAIM_COUNT])
                if reply[0] == b"hold":
                    held_back = int(reply[1])
                    break
                cursor = reply[1]
                claimed += [(group, _text(ref)) for ref in reply[2]]
                if _text(cursor) == "0-0":
                    break
            if held_back:
                break
        if held_back and not self._holding:
            log.info("no supervisor renewed its lease in Redis for a while (Redis was down, stalled or restarted, "
                     "or every supervisor was cut off, or none ran): nothing is taken from other supervisors for "
                     "%.1fs, so each renews what it holds first", held_back / 1000)
        self._holding = bool(held_back)
        if claimed:
            self.lost.difference_update(claimed)
            log.warning("reclaimed %d messages from supervisors that stopped renewing their lease", len(claimed))
            self._learn_failures(claimed)
            sequences = self._sequences_of(claimed)
            for key in claimed:
                self._enqueue(key, *sequences.get(key, (None, None)))

    def _sequences_of(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, float | None]]:
        """The sequence keys (and expiresAt) of reclaimed entries (a reclaim returns ids only), in one trip."""
        pipe = self.client.pipeline(transaction=False)
        for group, ref in keys:
            pipe.xrange(self.keys.stream(group), ref, ref)
        found = {}
        for key, entries in zip(keys, pipe.execute(), strict=True):
            sequence = sequence_of(entries[0][1]) if entries else None
            if sequence is not None:
                found[key] = (sequence, expiry_of(entries[0][1]))
        return found

    def _learn_failures(self, keys: list[tuple[str, str]]) -> None:
        if not keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for group, ref in keys:
            pipe.llen(self.keys.deliveries(group, ref))
        for key, count in zip(keys, pipe.execute(), strict=True):
            if count:
                self.failures[key] = count

    def _refresh_groups(self) -> None:
        known = {_text(g) for g in self.client.smembers(self.keys.groups)}
        known |= set(self.config.spool.groups) | self.bridge.groups()
        for group in sorted(known - self.groups):
            if self.config.spool.strict_groups and group not in self.config.spool.groups:
                continue
            try:
                self.client.xgroup_create(self.keys.stream(group), CONSUMER_GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self.client.sadd(self.keys.groups, group)
            self.groups.add(group)  # read from the next read on (an outstanding one returns within block_ms)
            log.info("IPC watcher setup for group %s (Redis stream %s)", group, self.keys.stream(group))

    # -- finishing ---------------------------------------------------------------------------------------------

    def _dead_letter(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None) -> int:
        error_file = f"{group}/errors/{ref}"  # as `ipcpool errors show` names it (and finds it: by its entry)
        body = dict(record, originalEntry=ref, group=group)
        nack_body = json.dumps(dict(nack, errorFile=error_file)).encode() if nack is not None else None
        return int(quarantine(self.scripts, self.keys, group, ref, ref, record.get("id"),
                              json.dumps(body, default=str).encode(), nack_body, max(1, int(self.config.ack.retention)),
                              _answer_ttl(self.config)))

    def _finish_pending(self) -> None:
        """The kept acks and dead-letterings, into Redis; the journal says what is left (raises what Redis raises)."""
        try:
            for key, info in list(self.pending_work.items()):
                group, ref = key
                if "quarantine" in info:
                    self._dead_letter(group, ref, info["quarantine"], info.get("nack"))
                else:
                    complete(self.client, self.keys, group, ref, info.get("name") or ref, info.get("id"),
                             time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                             max(1, int(self.config.ack.retention)), _answer_ttl(self.config))
                del self.pending_work[key]
                log.info("finished group=%s entry=%s now that Redis is back", group, ref)
        finally:
            self.journal.save(self.pending_work)

    def _release(self, keys: list[tuple[str, str]]) -> None:
        by_group: dict[str, list[str]] = {}
        for group, ref in keys:
            by_group.setdefault(group, []).append(ref)
        try:
            for group, refs in by_group.items():
                self.scripts.release(keys=[self.keys.stream(group)],
                                     args=[CONSUMER_GROUP, self.consumer, self.lease_ms + 1, *refs])
        except UNAVAILABLE:
            pass  # they come back to anyone after the lease anyway

    def _prune(self) -> None:
        """Dead letters past their retention; consumers of gone supervisors that hold nothing."""
        cutoff_ms = int((time.time() - self.config.redis.dead_letter_retention) * 1000)
        for group in sorted(self.groups):
            self.client.execute_command("XTRIM", self.keys.dead(group), "MINID", cutoff_ms)
            for consumer in self.client.xinfo_consumers(self.keys.stream(group), CONSUMER_GROUP):
                name = _text(consumer.get("name"))
                if name != self.consumer and not consumer.get("pending") and consumer.get("idle", 0) > self.lease_ms:
                    self.client.xgroup_delconsumer(self.keys.stream(group), CONSUMER_GROUP, name)

    def _lost(self, exc: BaseException) -> None:
        self.outage.failed(exc)
        self.reader.drop()


def _answer_ttl(config: Config) -> int:
    from ipcpool.config import ack_retry_window

    return max(60, int(ack_retry_window(config.ack)) + 60)

