"""The supervisor: one process, one loop, every message in exactly one place.

Data flow::

    senders --rename--> <group>/messages/
                             |  inotify fd, read in the loop -> hints (file, closed, group, overflow)
                             v
    pending (ordered, deduplicated) --claim: rename into processing/--> inflight
                             |                                            |
                             |  ("run", batch) on worker i's task pipe    |
                             v                                            |
    worker 1..N  --("done", results) / ("hb", heartbeat) / ("retiring", n) on its result pipe--> supervisor

The loop blocks in one call, an epoll wait (:class:`WaitSet`) over every
worker's result pipe and process sentinel, the inotify descriptor, and the
wake-up pipe (fed by signal handlers, and by the polling watcher's thread
when that is configured), then runs non-blocking steps named by
verbs: ``read_results``, ``drain_hints``, ``reap_workers``,
``kill_stale_workers``, ``recycle_workers``, ``spawn_missing_workers``,
``dispatch_pending``, ``run_timers``.

The supervisor is the only process that claims files (rename into
``processing/``), so ``inflight`` always says which worker holds which file:
when a worker dies, what it held goes back to ``messages/``; the delivery that
was running when it died counts against the message, and after
``[pool] max_deliveries`` such deliveries the message is quarantined as poison.
It never imports or runs handler code.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import select
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import EXIT_OK, EXIT_WORKER_BOOT, SpoolError
from ipcpool.health import ProcessProbe, write_status
from ipcpool.message import now_iso
from ipcpool.pool import (
    Delivery,
    StopReason,
    WorkerHandle,
    WorkerState,
    describe_exit,
    mp_context,
    spawn_worker,
)
from ipcpool.spool import ACKS, PROCESSING, RESPONSES, TMP, Spool, is_message_name
from ipcpool.status import build_status, count_errors
from ipcpool.watcher import CLOSED, FILE, GROUP, LOST, OVERFLOW, Hint, make_watcher

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


class Supervisor:
    def __init__(self, config: Config, *, clock: Any = time.monotonic,
                 handlers: dict[str, Any] | None = None) -> None:
        self.config = config
        self.handler_objects = handlers
        self.clock = clock
        self.spool = Spool.from_config(config)
        self.pool_size = config.pool.workers
        self.workers: list[WorkerHandle] = []
        self.restarts = [0] * self.pool_size
        self.next_spawn = [0.0] * self.pool_size
        self.boot_failures = 0
        self.crash_streak = [0] * self.pool_size
        self.pending: OrderedDict[Key, float] = OrderedDict()
        self.inflight: dict[Key, WorkerHandle] = {}
        self.blocked: set[Key] = set()  # re-published while the same name is in flight
        self.unclaimable: set[Key] = set()  # rename refused (permissions): logged once, retried on rescans
        self.settling: dict[Key, float] = {}  # not decodable yet: wait until due
        self.failures: dict[Key, list[dict[str, Any]]] = {}
        self.groups: set[str] = set()
        self.external: dict[tuple[str, str], dict[str, Any]] = {}
        self.totals = {"handled": 0, "failed": 0, "duplicates": 0, "poisoned": 0, "requeued": 0}
        self._hints: deque[Hint] = deque()
        self._signals: deque[int] = deque()
        self._seq = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._waitset = WaitSet()
        self._ctx = mp_context(fork=handlers is not None)
        self._watcher: Any = None
        self._lock_fd: int | None = None
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
        self._lock_fd = self.spool.acquire_lock()
        try:
            self.boot()
            while self.state in ("running", "draining"):
                try:
                    self.step()
                except Exception:
                    log.exception("unexpected error in the supervisor loop; continuing")
                    time.sleep(self.tick)  # never spin on a repeating error
        finally:
            self.shutdown()
        return self.exit_code

    def boot(self) -> None:
        spool = self.spool
        self._install_signals()
        self.wait_for_old_workers()
        for group in self.config.spool.groups:
            spool.ensure_group(group)
        self.failures = spool.load_deliveries()
        for group in spool.list_groups():
            self.reconcile_group(group)
        now = self.clock()
        for slot in range(self.pool_size):
            self.spawn(slot, now)
        self._watcher = make_watcher(str(spool.root), self._on_hint,
                                     polling=self.config.spool.watcher == "polling",
                                     poll_interval=min(1.0, self.config.spool.rescan_interval))
        self._watcher.start()
        for group in spool.list_groups():
            self.add_group(group)
        self.state = "running"
        self.next_rescan = now + self.config.spool.rescan_interval

    def reconcile_group(self, group: str) -> None:
        """After a crash, everything in processing/ goes back to messages/ (not held against it)."""
        for name in self.spool.scan(group, PROCESSING):
            if self.requeue((group, name)) is not None:
                log.warning("Recovered message from processing/ after restart group=%s file=%s", group, name)

    def wait_for_old_workers(self) -> None:
        """Workers of a dead supervisor hold workers.lock shared until they exit: wait for them.

        After a grace period the holders still listed are killed, once; then
        start-up goes on regardless, so a lock leaked into some unrelated
        process can delay a restart but never block it.
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
                    st = os.fstat(fd)
                    for pid in _lock_holders(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                        log.warning("killing orphaned worker pid=%d of a previous supervisor", pid)
                        _kill_quietly(pid, signal.SIGKILL)
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
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(timeout=5)
            self._release_held(worker, blame=False)
            worker.close()
        self.workers.clear()
        if self.state != "halted":
            self.state = "stopped"
        try:
            self.write_status(self.clock())
        except OSError:
            pass
        log.info("Enhanced IPC system stopped (%s)", self.halt_reason or "drained")
        self._waitset.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the loop ---------------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """One iteration: block in one wait, then run every non-blocking step."""
        waitables: list[tuple[Any, str, Any]] = [(self._wake_r, "wake", self)]
        watch_fd = self._watcher.fileno() if self._watcher is not None else None
        if watch_fd is not None:
            waitables.append((watch_fd, "watch", self._watcher))
        for worker in self.workers:
            waitables.append((worker.sentinel, "sentinel", worker))
            if worker.results_open:
                waitables.append((worker.results, "results", worker))
        if timeout is None:
            # A rescan or pruning pass in slices: come straight back.
            timeout = 0.0 if self.rescan_queue or self._housekeeping is not None else self.tick
        ready = self._waitset.wait(waitables, timeout)
        if self._wake_r in ready:
            self._drain_wake_pipe()
        if watch_fd is not None and watch_fd in ready:
            self._hints.extend(self._watcher.read())
        self.handle_signals()
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

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if self.state == "running":
                log.info("received %s: draining (grace %gs)", signal.Signals(signum).name,
                         self.config.pool.shutdown_grace)
                self.begin_drain()
            elif self.state == "draining" and signum == signal.SIGINT:
                log.warning("second SIGINT: stopping now; held messages go back to messages/")
                self.drain_deadline = 0.0

    def begin_drain(self) -> None:
        self.state = "draining"
        self.drain_deadline = self.clock() + self.config.pool.shutdown_grace
        for worker in self.workers:
            self.stop_worker(worker, StopReason.DRAIN)

    # -- reading workers ------------------------------------------------------------------------

    def read_results(self, ready: list[Any]) -> None:
        ready_set = set(ready)
        for worker in list(self.workers):
            if not worker.results_open or worker.results not in ready_set:
                continue
            try:
                while worker.results_waiting():
                    self.on_worker_message(worker, worker.results.recv())
            except (EOFError, OSError):
                worker.results_open = False

    def on_worker_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        now = self.clock()
        if kind == "done":
            for seq, outcome, info in message[1]:
                self.on_done(worker, seq, outcome, info)
        elif kind == "hb":
            worker.last_heartbeat = now
            worker.heartbeat = message[1].get("payload", {})
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
            back = self.requeue(key, count=False)
            if back is not None:
                self.settling[back] = self.clock() + self.config.spool.settle_time
        elif outcome == "returned":
            back = self.requeue(key, count=False)
            if back is not None:
                self.pending[back] = self.clock()
        else:
            self._count_outcome(worker, outcome, key, info)
            if key in self.failures:
                del self.failures[key]
                self.spool.drop_deliveries(*key)
        if key in self.blocked:
            self.blocked.discard(key)
            self.pending[key] = self.clock()

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
            pid, status = info
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
        if key in self.inflight:
            self.blocked.add(key)
        elif key not in self.pending:
            self.pending[key] = now

    def add_group(self, group: str) -> None:
        if group in self.groups:
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
            names = self.spool.scan(group)
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
        load = {w: w.outstanding() for w in self.workers if w.state is WorkerState.READY and w.tasks_open}
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
            # A file stranded in processing/ under this name (a failed quarantine):
            # put it back beside the new one, and claim both in turn.
            log.warning("stranded file in processing/ group=%s file=%s; requeueing it", *key)
            back = self.requeue(key)
            self.pending[key] = self.clock()
            if back is not None and back != key:
                self.pending[back] = self.clock()
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
            siblings = [fd for w in self.workers for fd in (w.tasks.fileno(), w.results.fileno(), w.sentinel)]
            inherited = tuple(fd for fd in (*own, *siblings) if fd is not None)
        max_tasks = self.config.pool.max_tasks_per_worker
        if max_tasks:  # jittered, so workers started together do not all retire together
            max_tasks += random.randint(0, max(1, max_tasks // 10))
        worker = spawn_worker(self._ctx, self.config, slot, os.getpid(), now, self.handler_objects, inherited,
                              max_tasks)
        self.workers.append(worker)

    def spawn_missing_workers(self, now: float) -> None:
        if self.state != "running":
            return
        occupied = {w.slot for w in self.workers}
        for slot in range(self.pool_size):
            if slot not in occupied and now >= self.next_spawn[slot]:
                self.spawn(slot, now)

    def reap_workers(self, now: float, ready: list[Any] | None = None) -> None:
        """Handle every worker whose process ended (its sentinel fired, or any, when ``ready`` is None)."""
        fired = None if ready is None else set(ready)
        for worker in list(self.workers):
            if fired is not None and worker.sentinel not in fired and worker.results_open:
                continue
            if worker.process.is_alive():
                continue
            worker.process.join(timeout=0)
            self.read_leftovers(worker)
            self.workers.remove(worker)
            was_starting = worker.state is WorkerState.STARTING
            worker.state = WorkerState.DEAD
            code = worker.process.exitcode
            how = describe_exit(code)
            if worker.stop_reason in (StopReason.RECYCLE, StopReason.DRAIN):
                log.info("worker stopped pid=%d slot=%d (%s, %s)", worker.pid, worker.slot,
                         worker.stop_reason.value, how)
                self._release_held(worker, blame=False)
                self.next_spawn[worker.slot] = now
            elif was_starting and _is_boot_failure(code, worker.stop_reason):
                self.on_boot_failure(worker, how, now)
            else:
                self.on_crash(worker, how, now)
            self._waitset.forget(worker)  # before its fds close: a forked sibling may still hold copies
            worker.close()
            self.next_status = 0.0

    def read_leftovers(self, worker: WorkerHandle) -> None:
        """Results a worker sent just before it died still count."""
        if not worker.results_open:
            return
        try:
            while worker.results_waiting():
                self.on_worker_message(worker, worker.results.recv())
        except (EOFError, OSError):
            pass
        worker.results_open = False

    def on_boot_failure(self, worker: WorkerHandle, how: str, now: float) -> None:
        self.boot_failures += 1
        self._release_held(worker, blame=False)
        detail = worker.boot_error or how
        limit = self.config.pool.max_boot_failures
        log.error("worker failed to boot pid=%d slot=%d (%s), failure %d of %d: %s",
                  worker.pid, worker.slot, how, self.boot_failures, limit, detail.strip())
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
        """Everything a gone worker held goes back; the running delivery is blamed if asked."""
        current, _started = worker.current() if blame else (None, 0.0)
        for delivery in list(worker.held.values()):
            key = delivery.key
            self.inflight.pop(key, None)
            if delivery is current:
                self.record_failed_delivery(delivery, worker, how)
            elif (back := self.requeue(key)) is not None:
                self.pending[back] = self.clock()
            if key in self.blocked:
                self.blocked.discard(key)
                self.pending[key] = self.clock()
        worker.held.clear()

    def record_failed_delivery(self, delivery: Delivery, worker: WorkerHandle, how: str) -> None:
        key = delivery.key
        history = self.failures.setdefault(key, [])
        history.append({"delivery": delivery.deliveries, "workerPid": worker.pid, "ended": how, "time": now_iso()})
        limit = self.config.pool.max_deliveries
        if len(history) >= limit:
            record = {"id": None, "type": None, "attempts": len(history),
                      "reason": f"poison message: {len(history)} deliveries killed or hung a worker "
                                f"([pool] max_deliveries = {limit})",
                      "deliveries": history}
            try:
                self.spool.quarantine(key[0], key[1], record)
                log.error("Poison message moved to errors/ group=%s file=%s after %d deliveries",
                          key[0], key[1], len(history))
                self.totals["poisoned"] += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot quarantine poison message group=%s file=%s: %s; it stays in processing/ "
                          "until the next start", key[0], key[1], exc)
            del self.failures[key]
            self.spool.drop_deliveries(*key)
            return
        back = self.requeue(key)
        if back is None:  # gone (it was handled after all): forget its history
            self.failures.pop(key, None)
            self.spool.drop_deliveries(*key)
            return
        self.spool.save_deliveries(back[0], back[1], history)
        self.pending[back] = self.clock()

    def requeue(self, key: Key, *, count: bool = True) -> Key | None:
        """processing/ -> messages/; the key it now has (renamed if its name was taken), or None."""
        name = self.spool.requeue(*key)
        if name is None:
            return None
        if count:
            self.totals["requeued"] += 1
        back = (key[0], name)
        if name != key[1] and key in self.failures:
            self.failures[back] = self.failures.pop(key)
            self.spool.drop_deliveries(*key)
            self.spool.save_deliveries(back[0], back[1], self.failures[back])
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
                self.kill_worker(worker, worker.stop_reason or StopReason.RECYCLE, "did not exit after recycling")
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
                self.kill_worker(worker, StopReason.TIMEOUT,
                                 f"handler ran {now - started:.1f}s on group={current.group} file={current.name}")

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
        if self.settling:
            for key, due in list(self.settling.items()):
                if now >= due:
                    del self.settling[key]
                    self.pending.setdefault(key, now)
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

    def _all_ready(self) -> bool:
        return len(self.workers) == self.pool_size and all(w.state is WorkerState.READY for w in self.workers)

    def read_processes(self) -> None:
        for worker in self.workers:
            if worker.probe is None and worker.pid:
                worker.probe = ProcessProbe(worker.pid)
            if worker.probe is not None:
                worker.reading = worker.probe.read()

    def housekeeping(self) -> Iterator[None]:
        """Prune old acks and uncollected responses; remove temp files crashed writers left.

        A generator, one folder entry per step: :meth:`continue_housekeeping`
        runs it in slices, as rescans are, so a day of acks never stalls dispatch.
        """
        cfg = self.config
        wall = time.time()
        for group in list(self.groups):
            for sub, age in ((ACKS, cfg.ack.retention), (RESPONSES, cfg.spool.response_retention),
                             (TMP, cfg.spool.tmp_max_age)):
                for name in self.spool.scan_ages(group, sub, wall - age):
                    if name is not None:
                        try:
                            os.unlink(self.spool.path(group, sub, name))
                        except OSError as exc:
                            if exc.errno != errno.ENOENT:
                                log.warning("cannot prune %s/%s/%s: %s", group, sub, name, exc)
                    yield
        self.spool.prune_staging({os.getpid(), *(w.pid for w in self.workers if w.pid)})
        cutoff = wall - EXTERNAL_HEARTBEAT_TTL
        for key in [k for k, v in self.external.items() if v["at"] < cutoff]:
            del self.external[key]

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
        write_status(self.spool.root, build_status(self, now))


class WaitSet:
    """One epoll set kept across iterations (building a selector per wait cost more than the wait).

    Each call names what to wait on as ``(waitable, role, owner)``; a
    registration is kept while the same role of the same owner still asks
    for it, so a reused fd number (a worker died, a new one got its fd) is
    registered afresh. A dead worker's fds must be :meth:`forget`-ed before
    they are closed. Returns the waitables that are ready.
    """

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._registered: dict[int, tuple[Any, str, Any]] = {}

    def wait(self, waitables: list[tuple[Any, str, Any]], timeout: float) -> list[Any]:
        if self._epoll is None:  # created lazily, in the process that waits (compat forks the supervisor)
            self._epoll = select.epoll()
        epoll, registered = self._epoll, self._registered
        wanted = {(w if isinstance(w, int) else w.fileno()): (w, role, owner) for w, role, owner in waitables}
        for fd, (_, role, owner) in list(registered.items()):
            now = wanted.get(fd)
            if now is None or now[1] != role or now[2] is not owner:
                del registered[fd]
                try:
                    epoll.unregister(fd)
                except OSError:  # already gone with its closed fd
                    pass
        for fd, entry in wanted.items():
            if fd not in registered:
                try:
                    epoll.register(fd, select.EPOLLIN)
                except FileExistsError:
                    epoll.modify(fd, select.EPOLLIN)
                registered[fd] = entry
        try:
            events = epoll.poll(timeout)
        except InterruptedError:
            return []
        return [registered[fd][0] for fd, _ in events if fd in registered]

    def forget(self, owner: Any) -> None:
        """Unregister an owner's fds while they are still open.

        epoll tracks the open file, not the number: an fd closed here but
        still open in a forked child would stay registered (and report HUP
        forever) if it were not unregistered first.
        """
        for fd in [fd for fd, entry in self._registered.items() if entry[2] is owner]:
            del self._registered[fd]
            if self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def fileno(self) -> int | None:
        return self._epoll.fileno() if self._epoll is not None else None

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._registered.clear()


def _is_boot_failure(code: int | None, reason: StopReason | None) -> bool:
    """Died on its own before ready: a boot error exit, any error exit, or a fatal signal it raised."""
    if reason is StopReason.BOOT_TIMEOUT:
        return True
    if reason is not None or code is None:
        return False
    if code > 0:
        return True
    return -code in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)


def _lock_holders(major: int, minor: int, inode: int) -> list[int]:
    """Pids holding a flock on this device and inode, read from /proc/locks (Linux)."""
    pids: list[int] = []
    wanted = f"{major:02x}:{minor:02x}:{inode}"
    try:
        with open("/proc/locks") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
                    pid = int(parts[4])
                    if pid != os.getpid():
                        pids.append(pid)
    except OSError:
        pass
    return pids


def _kill_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
