"""The supervisor: one process, one loop, every message in exactly one place.

Data flow::

    senders --rename--> <group>/messages/
                             |  inotify fd, read in the loop -> hints (file, closed, group, overflow)
                             v
    pending (ordered, deduplicated) --claim: rename into processing/--> inflight
                             |                                            |
                             |  ("run", batch) on worker i's task pipe    |
                             v                                            |
    worker 1..N  --("done", results) / ("hb", heartbeat) / ("stopping", why)
                   / ("retiring", n) on its result pipe--> supervisor

The loop blocks in one call, an epoll wait (:class:`WaitSet`) over every
worker's result pipe and process (its status pipe, or its pidfd once the
forkserver that passes statuses on is gone), task pipes with a backlog, the
inotify descriptor, and the wake-up pipe (fed by signal handlers, and by the
polling watcher's thread when that is configured), then runs non-blocking
steps named by verbs: ``read_results``, ``drain_hints``, ``reap_workers``,
``kill_stale_workers``, ``recycle_workers``, ``spawn_missing_workers``,
``dispatch_pending``, ``run_timers``. Nothing in it blocks on one worker:
the pipes are written and read without waiting (``ipcpool.channel``).

The supervisor is the only process that claims files (rename into
``processing/``), so ``inflight`` always says which worker holds which file:
when a worker has really ended (a lost exit status is not a death), what it
held goes back to ``messages/``; the delivery that was running when it died
counts against the message, and after ``[pool] max_deliveries`` such
deliveries the message is quarantined as poison. A transition that fails
half-way (a requeue, a quarantine, the ack of a handled message on a full
disk) leaves the message tracked in ``stranded`` and retried. It never
imports or runs handler code.

Signals: SIGTERM and SIGINT drain (a second SIGINT, or SIGQUIT, stops now:
held messages go back); SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN and SIGTTOU are
logged and ignored, so a signal to the whole process group never kills the
pool without a word. ``status.json`` always ends in the final state.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

from ipcpool import proctitle
from ipcpool.config import Config
from ipcpool.errors import EXIT_OK, EXIT_WORKER_BOOT, EXIT_WORKER_GRACE, SpoolError
from ipcpool.health import ProcessProbe, write_status
from ipcpool.message import format_for, now_iso, summarize_bytes
from ipcpool.pool import (
    Delivery,
    StopReason,
    WorkerHandle,
    WorkerState,
    describe_exit,
    kill_lock_holders,
    lock_holders,
    mp_context,
    spawn_worker,
)
from ipcpool.spool import ACKS, PROCESSING, RESPONSES, RETRIED, TMP, Spool, is_message_name, message_stem
from ipcpool.status import build_status, count_errors
from ipcpool.stranded import ACK, QUARANTINE, REQUEUE, RETRY_INTERVAL, Stranded
from ipcpool.waitset import READABLE, WRITABLE, Waitable, WaitSet
from ipcpool.watcher import CLOSED, FILE, GROUP, LOST, OVERFLOW, Hint, make_watcher
from ipcpool.worker import SLOT_ACK_HOLDS, nack_body

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (group, file name)
HOUSEKEEPING_INTERVAL = 60.0
RESCAN_SLICE = 0.0002  # seconds of scanning per loop iteration
BOOT_BACKOFF = 0.1  # first respawn delay after a boot failure; doubles each time
CRASH_BACKOFF = 0.02  # respawn delay after repeated young crashes; doubles, capped
CRASH_BACKOFF_MAX = 0.5
SHORT_LIFE = 1.0  # a worker that dies younger than this counts towards a crash streak
EXTERNAL_HEARTBEAT_TTL = 3600.0
MAX_EXTERNAL_HEARTBEATS = 1000
SHUTDOWN_KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed worker to be gone at exit

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGALRM,
                 signal.SIGVTALRM, signal.SIGPROF)
STOP_NOW_SIGNALS = (signal.SIGQUIT,)
IGNORED_SIGNALS = {
    signal.SIGHUP: "there is no reload yet: the config is read at start, restart to apply a change",
    signal.SIGUSR1: "no action is bound to it",
    signal.SIGUSR2: "no action is bound to it",
    signal.SIGTTIN: "no action is bound to it",
    signal.SIGTTOU: "no action is bound to it",
}
PLANNED_STOPS = (StopReason.RECYCLE, StopReason.DRAIN, StopReason.TERMINATED)


class Supervisor:
    def __init__(self, config: Config, *, clock: Any = time.monotonic,
                 handlers: dict[str, Any] | None = None, lock_fd: int | None = None,
                 on_started: Any = None) -> None:
        self.config = config
        self.handler_objects = handlers
        self.clock = clock
        self.spool = Spool.from_config(config)
        self.pool_size = config.pool.workers
        self.workers: list[WorkerHandle] = []
        self.restarts = [0] * self.pool_size
        self.next_spawn = [0.0] * self.pool_size
        self.boot_failures = 0
        self.last_boot_error = ""
        self.crash_streak = [0] * self.pool_size
        self.pending: OrderedDict[Key, float] = OrderedDict()
        self.inflight: dict[Key, WorkerHandle] = {}
        self.blocked: set[Key] = set()  # re-published while the same name is in flight (or stranded)
        self.unclaimable: set[Key] = set()  # rename refused (permissions): logged once, retried on rescans
        self.settling: dict[Key, float] = {}  # not decodable yet: wait until due
        self.failures: dict[Key, list[dict[str, Any]]] = {}
        self.stranded = Stranded(self.spool, self._requeue_stranded)
        self.groups: set[str] = set()
        self.refused_groups: set[str] = set()  # folders strict_groups keeps out (each logged once)
        self.external: dict[tuple[str, str], dict[str, Any]] = {}
        self.totals = {"handled": 0, "failed": 0, "duplicates": 0, "poisoned": 0, "requeued": 0}
        self.returned = 0  # messages put back into messages/ since the drain began
        self._hints: deque[Hint] = deque()
        self._signals: deque[int] = deque()
        self._seq = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._waitset = WaitSet()
        self._ctx = mp_context(fork=handlers is not None)
        self._watcher: Any = None
        self._lock_fd: int | None = lock_fd  # the compat API takes the lock before it forks us
        self._on_started = on_started  # called once every worker is ready (the compat API waits for it)
        self.state = "starting"
        self.exit_code = EXIT_OK
        self.halt_reason = ""
        self.announced = False
        self.started_wall = time.time()
        self.drain_deadline = 0.0
        interval = config.heartbeat.interval
        self.tick = min(0.25, interval / 4)
        self.next_status = 0.0
        self.next_rescan = 0.0
        self.next_housekeeping = 0.0
        self.next_stranded_retry = 0.0
        self._housekeeping: Iterator[None] | None = None  # a pruning pass in progress
        self.errors_cache: dict[str, tuple[int, int]] = {}  # group -> (errors/ mtime, quarantined count)
        self.rescan_queue: deque[str] = deque()

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> int:
        """Boot, loop until drained or halted, clean up; returns the exit code.

        Raises AlreadyRunning, before touching anything, when another
        supervisor owns the root.
        """
        self.spool.ensure_root()
        if self._lock_fd is None:
            self._lock_fd = self.spool.acquire_lock()
        else:
            self.spool.record_lock_owner(self._lock_fd)
        try:
            self.boot()
            while self.state in ("running", "draining"):
                try:
                    self.step()
                except Exception:
                    log.exception("unexpected error in the supervisor loop; continuing")
                    time.sleep(self.tick)  # never spin on a repeating error
        except BaseException as exc:
            self.state = "failed"
            self.halt_reason = self.halt_reason or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.shutdown()
        return self.exit_code

    def boot(self) -> None:
        spool = self.spool
        proctitle.Title().set(proctitle.supervisor(spool.root))
        self._install_signals()
        self.wait_for_old_workers()
        for group in self.config.spool.groups:
            spool.ensure_group(group)
        self.failures = spool.load_deliveries()
        recovered = sum(self.reconcile_group(group) for group in spool.list_groups())
        now = self.clock()
        for slot in range(self.pool_size):
            self.spawn(slot, now)
        self._watcher = make_watcher(str(spool.root), self._on_hint,
                                     polling=self.config.spool.watcher == "polling",
                                     poll_interval=min(1.0, self.config.spool.rescan_interval),
                                     inboxes=self.config.spool.inboxes)
        self._watcher.start()
        for group in spool.list_groups():
            self.add_group(group)
        log.info("%d messages queued at start (%d recovered from processing/)", len(self.pending), recovered)
        self.state = "running"
        self.next_rescan = now + self.config.spool.rescan_interval

    def reconcile_group(self, group: str) -> int:
        """After a crash, everything in processing/ goes back to messages/ (not held against it).

        Handled messages kept for an ack that could not be written get it now.
        Returns how many messages went back.
        """
        for held in self.spool.ack_holds(group):
            self._ack_held((group, held), None)
        recovered = 0
        for name in self.spool.scan_processing(group):
            if self.requeue_or_strand((group, name)) is not None:
                recovered += 1
                log.warning("Recovered message from processing/ after restart group=%s file=%s", group, name)
        return recovered

    def wait_for_old_workers(self) -> None:
        """Workers of a dead supervisor hold workers.lock shared until they exit: wait for them.

        After a grace period the holders still there are killed, once, and
        only those proven to hold the lock (never a process that merely
        reused a listed pid); then start-up goes on regardless, so a lock
        leaked into some unrelated process can delay a restart but never block it.
        """
        path = self.spool.state_dir / "workers.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        grace = 2 * self.config.heartbeat.interval + 1.0
        deadline = time.monotonic() + grace
        killed = False
        try:
            while not self._signals:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    return
                except BlockingIOError:
                    pass
                if time.monotonic() > deadline:
                    if killed:
                        log.warning("workers.lock is still held; starting anyway")
                        return
                    for pid in kill_lock_holders(fd, lock_holders(fd)):
                        log.warning("killed orphaned worker pid=%d of a previous supervisor", pid)
                    killed = True
                    deadline = time.monotonic() + grace
                time.sleep(0.05)
        finally:
            os.close(fd)

    def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        for worker in list(self.workers):
            # A worker whose exit status was lost may still run: it is ended before
            # what it held goes back, so nothing is handled and requeued at once.
            if not worker.has_exited():
                worker.signal(signal.SIGKILL)
                if not worker.wait_gone(SHUTDOWN_KILL_WAIT):
                    log.error("worker pid=%d did not end after SIGKILL; what it held stays in processing/ "
                              "until the next start", worker.pid)
                    continue
            self.read_leftovers(worker)
            self._release_held(worker, blame=False)
            self._waitset.forget(worker)
            worker.close()
        self.workers.clear()
        if self.state not in ("halted", "failed"):
            self.state = "stopped"
        if self.returned:
            log.info("returned %d messages to messages/", self.returned)
        try:
            self.write_status(self.clock())
        except OSError as exc:
            log.error("cannot write the final status.json: %s", exc)
        log.info("Enhanced IPC system stopped (%s)", self.halt_reason or "drained")
        self._waitset.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the loop ---------------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """One iteration: block in one wait, then run every non-blocking step."""
        waitables: list[Waitable] = [(self._wake_r, READABLE, "wake", self)]
        watch_fd = self._watcher.fileno() if self._watcher is not None else None
        if watch_fd is not None:
            waitables.append((watch_fd, READABLE, "watch", self._watcher))
        for worker in self.workers:
            death = worker.death_fd
            if death is not None:
                waitables.append((death, READABLE, "death", worker))
            if worker.results.open:
                waitables.append((worker.results.fd, READABLE, "results", worker))
            if worker.tasks.pending:
                waitables.append((worker.tasks.fd, WRITABLE, "tasks", worker))
        if timeout is None:
            # A rescan or pruning pass in slices: come straight back.
            timeout = 0.0 if self.rescan_queue or self._housekeeping is not None else self.tick
        ready = self._waitset.wait(waitables, timeout)
        if self._wake_r in ready:
            self._drain_wake_pipe()
        if watch_fd is not None and watch_fd in ready:
            self._hints.extend(self._watcher.read())
        self.handle_signals()
        self.flush_tasks(ready)
        self.read_results(ready)
        self.drain_hints()
        now = self.clock()
        self.reap_workers(now, ready)
        self.kill_stale_workers(now)
        self.recycle_workers()
        self.spawn_missing_workers(now)
        self.dispatch_pending()
        self.run_timers(now)

    def _on_hint(self, hint: Hint) -> None:
        """The polling watcher's thread: enqueue and wake, nothing else."""
        self._hints.append(hint)
        try:
            os.write(self._wake_w, b"h")
        except BlockingIOError:
            pass

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _install_signals(self) -> None:
        def record(signum: int, _frame: Any) -> None:
            self._signals.append(signum)  # only record: the loop acts on it

        for signum in (*DRAIN_SIGNALS, *STOP_NOW_SIGNALS, *IGNORED_SIGNALS):
            signal.signal(signum, record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            name = signal.Signals(signum).name
            if signum in IGNORED_SIGNALS:
                log.warning("received %s: ignored (%s)", name, IGNORED_SIGNALS[signal.Signals(signum)])
            elif signum in STOP_NOW_SIGNALS or (self.state == "draining" and signum == signal.SIGINT):
                log.warning("received %s%s: stopping now; held messages go back to messages/",
                            "a second " if signum == signal.SIGINT else "", name)
                if self.state == "running":
                    self.begin_drain()
                self.drain_deadline = 0.0
            elif self.state == "running":
                log.info("received %s: draining (grace %gs)", name, self.config.pool.shutdown_grace)
                self.begin_drain()

    def begin_drain(self) -> None:
        self.state = "draining"
        self.drain_deadline = self.clock() + self.config.pool.shutdown_grace
        for worker in self.workers:
            self.stop_worker(worker, StopReason.DRAIN)

    # -- talking to workers ------------------------------------------------------------------------

    def flush_tasks(self, ready: set[int]) -> None:
        """Task pipes that had a backlog and now have room."""
        for worker in self.workers:
            if worker.tasks.pending and worker.tasks.fd in ready:
                worker.tasks.flush()

    def read_results(self, ready: set[int]) -> None:
        for worker in list(self.workers):
            if worker.results.open and worker.results.fd in ready:
                for message in worker.results.read():
                    self.on_worker_message(worker, message)

    def on_worker_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        now = self.clock()
        if kind == "done":
            for seq, outcome, info in message[1]:
                self.on_done(worker, seq, outcome, info)
        elif kind == "hb":
            worker.last_heartbeat = now
            worker.current_message = message[1].get("payload", {}).get("currentMessage")
        elif kind == "stopping":  # SIGTERM reached the worker itself (kill, or the whole process group)
            if worker.stop_reason is None:
                log.info("worker pid=%d slot=%d received %s: it finishes its current message and returns "
                         "the rest", worker.pid, worker.slot, message[1])
                worker.stop_reason = StopReason.TERMINATED
                worker.state = WorkerState.STOPPING
                worker.stop_by = now + self.config.pool.shutdown_grace + self.config.pool.kill_grace
        elif kind == "retiring":  # reached its max_tasks: it returned the rest and exits by itself
            if worker.stop_reason is None:
                log.info("recycling worker pid=%d after %d tasks", worker.pid, message[1])
                worker.stop_reason = StopReason.RECYCLE
                worker.state = WorkerState.STOPPING
                worker.stop_by = self.clock() + self.config.pool.shutdown_grace
        elif kind == "ready":
            worker.state = WorkerState.READY if worker.stop_reason is None else worker.state
            worker.last_heartbeat = now
            self.boot_failures = 0
            self.next_status = 0.0  # a probe right after start or a restart sees the new worker
            log.info("worker ready pid=%d slot=%d", worker.pid, worker.slot)
        elif kind == "boot_error":
            worker.boot_error = str(message[1])

    def on_done(self, worker: WorkerHandle, seq: int, outcome: str, info: Any) -> None:
        delivery = worker.held.pop(seq, None)
        if delivery is None:
            return
        key = delivery.key
        self.inflight.pop(key, None)
        if outcome == "unsettled":
            back = self.requeue_or_strand(key, count=False)
            if back is not None:
                self.pending.pop(back, None)
                self.settling[back] = self.clock() + self.config.spool.settle_time
        elif outcome == "returned":
            self.requeue_or_strand(key, count=False)
        else:
            self._count_outcome(worker, outcome, key, info)
            if key in self.failures:
                del self.failures[key]
                self.spool.drop_deliveries(*key)
            self._take_over(key, info[-1] if outcome == "heartbeat" and info is not None else info)
        self._unblock(key)

    def _take_over(self, key: Key, info: Any) -> None:
        """What a worker could not finish for a delivery: an ack to write, a move to errors/ to make."""
        if not isinstance(info, dict):
            return
        if "ackHold" in info:
            self._ack_held((key[0], info["ackHold"]), info.get("id"), errno_=info.get("errno"))
        elif "quarantine" in info:
            self.stranded.add(key, QUARANTINE, info.get("error", "the move to errors/ failed"),
                              errno_=info.get("errno"), record=info["quarantine"], nack=info.get("nack"))

    def _ack_held(self, key: Key, message_id: str | None, *, errno_: int | None = None) -> None:
        """Write the ack of a handled message held in processing/, or keep trying."""
        try:
            self.spool.release_ack_hold(key[0], key[1], message_id)
        except OSError as exc:
            self.stranded.add(key, ACK, exc, message_id=message_id or key[1][5:])
            self._mark_ack_holds(True)
            return
        log.info("ACK written for a handled message that had to wait for it group=%s id=%s",
                 key[0], message_id or key[1])

    def _mark_ack_holds(self, on: bool) -> None:
        """Tell every worker whether handled messages wait for acks (then the ack check also looks for them)."""
        for worker in self.workers:
            worker.shared[SLOT_ACK_HOLDS] = 1.0 if on else 0.0

    def _count_outcome(self, worker: WorkerHandle, outcome: str, key: Key, info: Any) -> None:
        if outcome == "handled":
            worker.handled += 1
            self.totals["handled"] += 1
        elif outcome == "duplicate":
            worker.handled += 1
            self.totals["duplicates"] += 1
        elif outcome in ("failed", "invalid"):
            worker.failed += 1
            self.totals["failed"] += 1
        elif outcome == "heartbeat" and info is not None:
            pid, status = info[0], info[1]
            self.external[(key[0], str(pid))] = {"status": status, "at": time.time()}
            if len(self.external) > MAX_EXTERNAL_HEARTBEATS:  # bounded: writers choose the keys
                del self.external[min(self.external, key=lambda k: self.external[k]["at"])]

    # -- watcher hints and scans --------------------------------------------------------------------

    def drain_hints(self) -> None:
        hints = self._hints
        now = self.clock()
        while hints:
            kind, group, name = hints.popleft()
            if kind in (FILE, CLOSED):
                if group in self.groups and name is not None:
                    self.offer(group, name, now, closed=kind == CLOSED)
            elif kind == GROUP and group is not None:
                if self.spool.is_group_dir(group):
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
        """A file may be ready in messages/: queue it unless it is already known."""
        if not is_message_name(name):
            return
        key = (group, name)
        if key in self.settling:
            if not closed:
                return
            del self.settling[key]
        if key in self.inflight or key in self.stranded:
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
        try:
            self.spool.ensure_group(group)
        except (SpoolError, OSError) as exc:
            log.warning("refusing group %s: %s", group, exc)
            return
        self.groups.add(group)
        if self._watcher is not None:
            self._watcher.watch_group(group)
        self.scan_group(group)
        count_errors(self, group)

    def scan_group(self, group: str) -> None:
        now = self.clock()
        try:
            names = self.spool.scan_inboxes(group)
        except OSError as exc:
            log.error("cannot scan group %s: %s", group, exc)
            return
        for name in names:
            self.offer(group, name, now)

    def rescan(self) -> None:
        """Start a rescan: new groups now, every group's messages/ in slices (see continue_rescan)."""
        self.unclaimable.clear()  # retried (and logged again) at most once per rescan
        for group in self.spool.list_groups():
            if group not in self.groups:
                self.add_group(group)
            else:
                self.rescan_queue.append(group)

    def continue_rescan(self) -> None:
        """Scan queued groups for at most RESCAN_SLICE seconds, so a thousand groups never stall the loop."""
        deadline = time.monotonic() + RESCAN_SLICE
        queue = self.rescan_queue
        while queue and time.monotonic() < deadline:
            group = queue.popleft()
            if group in self.groups:
                self.scan_group(group)
                count_errors(self, group)

    # -- dispatch ------------------------------------------------------------------------------------------

    def dispatch_pending(self) -> None:
        if self.state != "running" or not self.pending:
            return
        prefetch = self.config.pool.prefetch
        # Top a worker up only once half its prefetch is free: fewer, larger batches.
        refill_at = max(1, prefetch // 2)
        load = {w: w.outstanding() for w in self.workers if w.state is WorkerState.READY and w.tasks.open}
        ready = [w for w, n in load.items() if prefetch - n >= refill_at]
        if not ready:
            return
        # Even shares: no worker holds more than its part of all the work pending or
        # outstanding, so a burst never queues behind one worker. Until the pool first
        # stands, workers still booting get their part too (a backlog at start is split);
        # later, a replacement booting does not hold work back from the others.
        booting = 0 if self.announced else sum(
            1 for w in self.workers if w.stop_reason is None and w.state is WorkerState.STARTING)
        work = len(self.pending) + sum(load.values())
        share = -(-work // (len(load) + booting))
        ready.sort(key=load.__getitem__)
        for worker in ready:
            room = min(prefetch, share) - load[worker]
            if room <= 0:
                continue
            batch: list[tuple[int, str, str, int]] = []
            while room > 0 and self.pending:
                key, _seen = self.pending.popitem(last=False)
                if key in self.inflight:
                    self.blocked.add(key)
                    continue
                if not self.claim(key):
                    continue
                self._seq += 1
                delivery = Delivery(self._seq, key[0], key[1], len(self.failures.get(key, ())) + 1)
                worker.held[self._seq] = delivery
                self.inflight[key] = worker
                batch.append((self._seq, key[0], key[1], delivery.deliveries))
                room -= 1
            if batch and not worker.send(("run", batch)):
                log.warning("worker pid=%d channel closed while dispatching", worker.pid)
            if not self.pending:
                break

    def claim(self, key: Key) -> bool:
        """Rename into processing/; a file that cannot be claimed never stops the loop."""
        try:
            return self.spool.claim(*key)
        except FileExistsError:
            if key in self.stranded:  # its namesake in processing/ is being retried: this one waits for it
                self.blocked.add(key)
                return False
            # An untracked file in processing/ under this name (put there by hand?):
            # put it back beside the new one, and claim both in turn.
            log.warning("stranded file in processing/ group=%s file=%s; requeueing it", *key)
            self.requeue_or_strand(key)
            self.pending[key] = self.clock()
            return False
        except OSError as exc:
            if key not in self.unclaimable:
                log.error("cannot claim group=%s file=%s: %s; leaving it in messages/", key[0], key[1], exc)
            self.unclaimable.add(key)
            return False

    # -- supervision --------------------------------------------------------------------------

    def spawn(self, slot: int, now: float) -> None:
        inherited: tuple[int, ...] = ()
        if self.handler_objects is not None:  # forked: close what is the supervisor's, siblings' channels too
            own = (self._lock_fd, self._wake_r, self._wake_w, self._waitset.fileno())
            siblings = [fd for w in self.workers for fd in (w.tasks.fd, w.results.fd, w.process.sentinel, w.pidfd)]
            inherited = tuple(fd for fd in (*own, *siblings) if fd is not None)
        max_tasks = self.config.pool.max_tasks_per_worker
        if max_tasks:  # jittered, so workers started together do not all retire together
            max_tasks += random.randint(0, max(1, max_tasks // 10))
        worker = spawn_worker(self._ctx, self.config, slot, os.getpid(), now, self.handler_objects, inherited,
                              max_tasks)
        if self.stranded.ack_holds:
            worker.shared[SLOT_ACK_HOLDS] = 1.0
        self.workers.append(worker)

    def spawn_missing_workers(self, now: float) -> None:
        if self.state != "running":
            return
        # After a boot failure, one worker at a time tries again: the pool halts after
        # max_boot_failures without a crowd of workers still booting behind the last one.
        probing = self.boot_failures > 0
        if probing and any(w.state is WorkerState.STARTING for w in self.workers):
            return
        occupied = {w.slot for w in self.workers}
        for slot in range(self.pool_size):
            if slot not in occupied and now >= self.next_spawn[slot]:
                self.spawn(slot, now)
                if probing:
                    return

    def reap_workers(self, now: float, ready: set[int] | None = None) -> None:
        """Handle every worker whose process has really ended (checked when its death fd fired, or always
        when ``ready`` is None)."""
        for worker in list(self.workers):
            fd = worker.death_fd
            if ready is not None and fd is not None and fd not in ready:
                continue
            if worker.has_exited():
                self.reap(worker, now)

    def reap(self, worker: WorkerHandle, now: float) -> None:
        """A worker has ended: account for what it reported and held, then let it go, whatever fails."""
        self.workers.remove(worker)
        try:
            worker.process.join(timeout=0)
            self.read_leftovers(worker)
            was_starting = worker.state is WorkerState.STARTING
            worker.state = WorkerState.DEAD
            code = worker.exit_code
            how = describe_exit(code, killed_by_us=worker.kill_at is not None)
            reason = worker.stop_reason
            if reason in PLANNED_STOPS or code == EXIT_WORKER_GRACE:
                why = reason.value if reason is not None else "stopping"
                if code == EXIT_WORKER_GRACE:
                    why += ", shutdown grace ran out mid-handler"
                log.info("worker stopped pid=%d slot=%d (%s, %s)", worker.pid, worker.slot, why, how)
                self._release_held(worker, blame=False)
                self.next_spawn[worker.slot] = now
            elif was_starting and _is_boot_failure(code, reason):
                self.on_boot_failure(worker, how, now)
            elif code == 0 and reason is None and worker.current()[0] is None:
                log.info("worker stopped by itself pid=%d slot=%d (%s: SIGTERM while idle?); replacing it",
                         worker.pid, worker.slot, how)
                self._release_held(worker, blame=False)
                self.next_spawn[worker.slot] = now
            else:
                self.on_crash(worker, how, now)
        finally:
            self._waitset.forget(worker)  # before its fds close: a forked sibling may still hold copies
            worker.close()
            self.next_status = 0.0

    def read_leftovers(self, worker: WorkerHandle) -> None:
        """Results a worker sent just before it ended still count."""
        for message in worker.results.read():
            self.on_worker_message(worker, message)

    def on_boot_failure(self, worker: WorkerHandle, how: str, now: float) -> None:
        self.boot_failures += 1
        self._release_held(worker, blame=False)
        detail = (worker.boot_error or how).strip()
        limit = self.config.pool.max_boot_failures
        # The traceback once; the same failure again is named by its first line.
        shown = detail if detail != self.last_boot_error else f"{detail.splitlines()[0]} (the same error again)"
        self.last_boot_error = detail
        log.error("worker failed to boot pid=%d slot=%d (%s), failure %d of %d: %s",
                  worker.pid, worker.slot, how, self.boot_failures, limit, shown)
        if self.boot_failures >= limit:
            self.halt(EXIT_WORKER_BOOT, f"workers cannot boot: {detail.strip().splitlines()[0]}")
            return
        self.next_spawn[worker.slot] = now + BOOT_BACKOFF * 2 ** (self.boot_failures - 1)

    def on_crash(self, worker: WorkerHandle, how: str, now: float) -> None:
        reason = worker.stop_reason
        if reason is StopReason.TIMEOUT:
            how = f"killed after handler_timeout ({self.config.pool.handler_timeout:g}s); {how}"
        elif reason is StopReason.HUNG:
            how = f"killed after missing heartbeats; {how}"
        log.error("worker died pid=%d slot=%d: %s; restarting", worker.pid, worker.slot, how)
        slot = worker.slot
        self.restarts[slot] += 1
        self._release_held(worker, blame=True, how=how)
        # Back off only when a slot keeps dying young without doing any work, so a crash
        # loop never spins hot while workers killed mid-task come back at once.
        idle_death = now - worker.started_at < SHORT_LIFE and worker.handled + worker.failed == 0
        self.crash_streak[slot] = self.crash_streak[slot] + 1 if idle_death else 0
        streak = self.crash_streak[slot]
        self.next_spawn[slot] = now + (min(CRASH_BACKOFF_MAX, CRASH_BACKOFF * 2**streak) if streak > 1 else 0.0)

    def _release_held(self, worker: WorkerHandle, *, blame: bool, how: str = "") -> None:
        """Everything an ended worker held goes back; the running delivery is blamed if asked.

        Each delivery is one transition: one that fails leaves its message
        stranded (tracked, retried), never half-forgotten.
        """
        current, _started = worker.current() if blame else (None, 0.0)
        held, worker.held = list(worker.held.values()), OrderedDict()
        for delivery in held:
            key = delivery.key
            self.inflight.pop(key, None)
            if delivery is current:
                self.record_failed_delivery(delivery, worker, how)
            else:
                self.requeue_or_strand(key)
            self._unblock(key)

    def _unblock(self, key: Key) -> None:
        """A copy of this name waited in messages/ for this one to be done: offer it now."""
        if key in self.blocked and key not in self.inflight and key not in self.stranded:
            self.blocked.discard(key)
            self.pending[key] = self.clock()

    def record_failed_delivery(self, delivery: Delivery, worker: WorkerHandle, how: str) -> None:
        key = delivery.key
        history = self.failures.setdefault(key, [])
        history.append({"delivery": delivery.deliveries, "workerPid": worker.pid, "ended": how, "time": now_iso()})
        limit = self.config.pool.max_deliveries
        if len(history) < limit:
            self.requeue_or_strand(key)
            return
        summary = self._summarize(key)
        record = {"id": summary.id, "type": summary.type, "attempts": len(history),
                  "reason": f"poison message: {len(history)} deliveries killed or hung a worker "
                            f"([pool] max_deliveries = {limit})",
                  "deliveries": history}
        nack = nack_body(key[0], record, summary, "poisoned")
        try:
            self.spool.quarantine(key[0], key[1], record, nack=nack)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.stranded.add(key, QUARANTINE, exc, record=record, nack=nack)
            return  # its history stays until the move is made
        else:
            log.error("Poison message moved to errors/ id=%s type=%s group=%s file=%s after %d deliveries",
                      summary.id, summary.type, key[0], key[1], len(history))
            self.totals["poisoned"] += 1
        del self.failures[key]
        self.spool.drop_deliveries(*key)

    def _summarize(self, key: Key) -> Any:
        """The id and type a file in processing/ states (read here only on the rare poison path)."""
        try:
            data = self.spool.read_claimed(*key).data
        except Exception:  # noqa: BLE001 - unreadable or refused: only the name speaks for it
            data = b""
        return summarize_bytes(data, format_for(key[1]), message_stem(key[1]))

    def requeue_or_strand(self, key: Key, *, count: bool = True) -> Key | None:
        """processing/ -> messages/ and queued; a failure leaves it stranded (tracked, retried)."""
        try:
            back = self.requeue(key, count=count)
        except OSError as exc:
            self.stranded.add(key, REQUEUE, exc)
            return None
        if back is not None:
            self.pending[back] = self.clock()
        return back

    def _requeue_stranded(self, key: Key) -> None:
        """The stranded list's retry of a requeue (an OSError keeps it stranded)."""
        back = self.requeue(key)
        if back is not None:
            self.pending[back] = self.clock()

    def requeue(self, key: Key, *, count: bool = True) -> Key | None:
        """processing/ -> messages/; the key it now has (renamed if its name was taken), or None if gone.

        A message's delivery history follows it (and is saved: a restart must
        not forget how often it killed a worker). Raises OSError when the
        rename fails; nothing has changed then.
        """
        name = self.spool.requeue(*key)
        if name is None:
            if self.failures.pop(key, None) is not None:  # it was handled after all
                self.spool.drop_deliveries(*key)
            return None
        if count:
            self.totals["requeued"] += 1
        if self.state != "running":
            self.returned += 1
        back = (key[0], name)
        history = self.failures.pop(key, None)
        if history is not None:
            self.failures[back] = history
            try:
                if back != key:
                    self.spool.drop_deliveries(*key)
                self.spool.save_deliveries(back[0], back[1], history)
            except OSError as exc:
                log.warning("cannot save the delivery history of group=%s file=%s (%s); kept in memory",
                            back[0], back[1], exc)
        return back

    def kill_stale_workers(self, now: float) -> None:
        pool = self.config.pool
        hb = self.config.heartbeat
        for worker in self.workers:
            if worker.kill_at is not None:
                if now >= worker.kill_at:
                    worker.signal(signal.SIGKILL)
                continue
            if worker.state is WorkerState.STARTING:
                if now - worker.started_at > max(pool.handler_timeout, 10.0):
                    self.kill_worker(worker, StopReason.BOOT_TIMEOUT, "did not boot in time")
                continue
            if worker.stop_by is not None and now > worker.stop_by:
                self.kill_worker(worker, worker.stop_reason or StopReason.RECYCLE, "did not exit in time")
                continue
            if worker.stop_reason is StopReason.DRAIN and now < self.drain_deadline:
                continue
            if worker.stop_reason is StopReason.DRAIN:
                self.kill_worker(worker, StopReason.DRAIN, "shutdown grace ran out")
                continue
            silent = now - worker.last_heartbeat
            if silent > hb.miss_limit * hb.interval:
                self.kill_worker(worker, StopReason.HUNG, f"no heartbeat for {silent:.1f}s")
                continue
            current, started = worker.current()
            if current is not None and now - started > pool.handler_timeout:
                said = self._summarize(current.key)
                self.kill_worker(worker, StopReason.TIMEOUT,
                                 f"handler ran {now - started:.1f}s (handler_timeout {pool.handler_timeout:g}s) "
                                 f"id={said.id} type={said.type} group={current.group} file={current.name}")

    def kill_worker(self, worker: WorkerHandle, reason: StopReason, why: str) -> None:
        """TERM now, KILL after [pool] kill_grace."""
        log.warning("killing worker pid=%d slot=%d (%s): %s", worker.pid, worker.slot, reason.value, why)
        worker.stop_reason = reason if worker.stop_reason is not StopReason.DRAIN else StopReason.DRAIN
        worker.state = WorkerState.STOPPING
        worker.signal(signal.SIGTERM)
        worker.kill_at = self.clock() + self.config.pool.kill_grace

    def stop_worker(self, worker: WorkerHandle, reason: StopReason) -> None:
        """Ask a worker to finish its current delivery, return the rest and exit."""
        worker.stop_reason = reason
        worker.state = WorkerState.STOPPING
        if reason is StopReason.RECYCLE:
            worker.stop_by = self.clock() + self.config.pool.handler_timeout + self.config.pool.shutdown_grace
        if not worker.send(("stop",)):
            worker.signal(signal.SIGTERM)

    def recycle_workers(self) -> None:
        """Stop workers over the memory limit; one past its task limit retires itself ("retiring")."""
        if self.state != "running":
            return
        limit_mb = self.config.pool.max_memory_mb
        for worker in self.workers:
            if worker.state is not WorkerState.READY:
                continue
            if limit_mb and worker.reading is not None and worker.reading.rss_mb > limit_mb:
                log.warning("recycling worker pid=%d: RSS %.0f MB is over max_memory_mb %d",
                            worker.pid, worker.reading.rss_mb, limit_mb)
                self.stop_worker(worker, StopReason.RECYCLE)

    def halt(self, code: int, reason: str) -> None:
        log.error("supervisor halting: %s", reason)
        self.exit_code = code
        self.halt_reason = reason
        self.state = "halted"

    # -- timers ------------------------------------------------------------------------------------------------------

    def run_timers(self, now: float) -> None:
        if self.state == "draining" and not self.workers:
            self.state = "stopped"
            return
        if self.state == "running" and not self.announced and self._all_ready():
            self.announced = True
            log.info("Enhanced IPC system started root=%s groups=%s workers=%d",
                     self.spool.root, ",".join(sorted(self.groups)), len(self.workers))
            if self._on_started is not None:
                self._on_started()
        if self.settling:
            for key, due in list(self.settling.items()):
                if now >= due:
                    del self.settling[key]
                    self.pending.setdefault(key, now)
        if self.stranded and now >= self.next_stranded_retry:
            self.next_stranded_retry = now + RETRY_INTERVAL
            self.retry_stranded()
        if now >= self.next_rescan and self.state == "running":
            self.next_rescan = now + self.config.spool.rescan_interval
            self.rescan()
        if self.rescan_queue:
            self.continue_rescan()
        if now >= self.next_status:
            self.next_status = now + self.config.heartbeat.interval
            self.reap_workers(now)
            self.read_processes()
            try:
                self.write_status(now)
            except OSError as exc:
                log.error("cannot write status.json: %s", exc)
        if now >= self.next_housekeeping and self.state == "running":
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL
            if self._housekeeping is None:
                self._housekeeping = self.housekeeping()
        if self._housekeeping is not None:
            self.continue_housekeeping()

    def retry_stranded(self) -> None:
        had_holds = self.stranded.ack_holds
        for key in self.stranded.retry():
            self.failures.pop(key, None)
            self._unblock(key)
        if had_holds and not self.stranded.ack_holds:
            self._mark_ack_holds(False)
        self.next_status = 0.0

    def _all_ready(self) -> bool:
        return len(self.workers) == self.pool_size and all(w.state is WorkerState.READY for w in self.workers)

    def read_processes(self) -> None:
        for worker in self.workers:
            if worker.probe is None and worker.pid:
                worker.probe = ProcessProbe(worker.pid)
            if worker.probe is not None:
                worker.reading = worker.probe.read()

    def housekeeping(self) -> Iterator[None]:
        """Prune old acks, nacks, uncollected responses and retried records; remove temp files crashed
        writers left; forget the histories of messages that are gone.

        A generator, one folder entry per step: :meth:`continue_housekeeping`
        runs it in slices, as rescans are, so a day of acks never stalls dispatch.
        """
        cfg = self.config
        wall = time.time()
        for group in list(self.groups):
            for sub, age in ((ACKS, cfg.ack.retention), (RESPONSES, cfg.spool.response_retention),
                             (TMP, cfg.spool.tmp_max_age), (RETRIED, cfg.spool.retried_retention)):
                for name in self.spool.scan_ages(group, sub, wall - age):
                    if name is not None:
                        self.spool.unlink_quietly(group, sub, name)
                    yield
        self.spool.prune_staging({os.getpid(), *(w.pid for w in self.workers if w.pid)})
        self.forget_gone_deliveries()
        cutoff = wall - EXTERNAL_HEARTBEAT_TTL
        for key in [k for k, v in self.external.items() if v["at"] < cutoff]:
            del self.external[key]

    def forget_gone_deliveries(self) -> None:
        """Delivery histories of messages no longer anywhere (an operator removed them) are dropped."""
        spool = self.spool
        for key in list(self.failures):
            if key in self.inflight or key in self.stranded or key in self.pending:
                continue
            if not os.path.lexists(spool.inbox_path(*key)) and not os.path.lexists(spool.path(key[0], PROCESSING,
                                                                                                key[1])):
                del self.failures[key]
                spool.drop_deliveries(*key)

    def continue_housekeeping(self) -> None:
        """Run the pending housekeeping for at most RESCAN_SLICE seconds."""
        assert self._housekeeping is not None
        deadline = time.monotonic() + RESCAN_SLICE
        try:
            while time.monotonic() < deadline:
                next(self._housekeeping)
        except StopIteration:
            self._housekeeping = None
        except OSError as exc:
            log.error("housekeeping failed: %s", exc)
            self._housekeeping = None

    # -- status --------------------------------------------------------------------

    def write_status(self, now: float) -> None:
        write_status(self.spool.root, build_status(self, now), mode=self.spool.file_mode())


def _is_boot_failure(code: int | None, reason: StopReason | None) -> bool:
    """Died on its own before ready: a boot error exit, any error exit, or a fatal signal it raised."""
    if reason is StopReason.BOOT_TIMEOUT:
        return True
    if reason is not None or code is None:
        return False
    if code > 0:
        return True
    return -code in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)
