"""The supervisor: one process, one loop, every worker watched, every message accounted for.

Data flow::

    transport (Source) --take--> held by worker i
                             |  ("run", [receipt, ...]) on worker i's task pipe
                             v
    worker 1..N  --("done", results, counts) / ("hb", heartbeat) / ("stopping", why)
                   / ("retiring", n) on its result pipe--> supervisor --> finished / requeue / quarantine

The loop blocks in one call, a selector's wait (:class:`WaitSet`: epoll on
Linux, kqueue on macOS) over every worker's result pipe and process (its
status pipe, or its pidfd once the forkserver that passes statuses on is
gone), task pipes with a backlog, the transport's descriptor (inotify for
the spool, a socket for Redis), and the
wake-up pipe (fed by signal handlers, and by a watcher thread when one is
configured), then runs non-blocking steps named by verbs: ``read_results``,
``poll`` (the transport), ``reap_workers``, ``kill_stale_workers``,
``recycle_workers``, ``spawn_missing_workers``, ``dispatch``, ``run_timers``.
Nothing in it blocks on one worker: the pipes are written and read without
waiting (``ipcpool.channel``).

The supervisor is the pool: it spawns, reaps, kills and recycles workers,
dispatches by their live load, decides when a message is poison, and handles
signals. Where messages live is the transport's business (``ipcpool.transport``):
the supervisor takes messages from it and gives them back. Every message a
worker holds is in that worker's ``held``; when a worker has really ended (a
lost exit status is not a death), what it held goes back; the delivery that
was running when it died counts against the message, and after
``[pool] max_deliveries`` such deliveries the message is quarantined as poison.
It never imports or runs handler code.

Signals, as gunicorn's arbiter takes them: SIGTERM and SIGINT drain (a second
SIGINT, or SIGQUIT, stops now: held messages go back); SIGHUP reloads (new
workers on the re-read config, the old ones exit once every new one is
ready; a config or import that fails leaves the old pool running); SIGTTIN
and SIGTTOU add and remove one worker; SIGUSR1 and SIGUSR2 are logged and
ignored, so a signal to the whole process group never kills the pool
without a word. ``status.json`` always ends in the final state.

Operators' interfaces hang off the loop without reaching into it: the HTTP
probes (``ipcpool.probes``) ask the loop and wait for its answer, systemd
hears ``READY=1``/``RELOADING=1``/``STOPPING=1``/``WATCHDOG=1``
(``ipcpool.sdnotify``), and /metrics' counts come from the workers' own
reports (``ipcpool.tally``).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import random
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ipcpool import portable
from ipcpool.config import Config
from ipcpool.errors import EXIT_OK, EXIT_WORKER_BOOT, EXIT_WORKER_GRACE, ConfigError
from ipcpool.localroot import LocalRoot, write_status
from ipcpool.message import now_iso
from ipcpool.ops import proctitle
from ipcpool.ops.health import ProcessProbe, create_time_of, judge
from ipcpool.ops.logs import MULTILINE, setup_logging
from ipcpool.ops.probes import Answer, LoopProbe, ProbeServer
from ipcpool.ops.sdnotify import notify, status_line, watchdog_interval
from ipcpool.ops.status import ExternalHeartbeat, GroupLoad, PoolSnapshot, Running, WorkerView, status_record
from ipcpool.ops.tally import Labels, PoolMetrics, Scrape
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
from ipcpool.records import nack_body
from ipcpool.reload import Reload, ReloadLog, restart_only_change
from ipcpool.schedule import Scheduler
from ipcpool.transport import make_outbox, make_source
from ipcpool.waitset import READABLE, WRITABLE, Waitable, WaitSet
from ipcpool.worker import SLOT_ACK_HOLDS

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 60.0
BOOT_BACKOFF = 0.1  # first respawn delay after a boot failure; doubles each time
CRASH_BACKOFF = 0.02  # respawn delay after repeated young crashes; doubles, capped
CRASH_BACKOFF_MAX = 0.5
SHORT_LIFE = 1.0  # a worker that dies younger than this counts towards a crash streak
EXTERNAL_HEARTBEAT_TTL = 3600.0
MAX_EXTERNAL_HEARTBEATS = 1000
SHUTDOWN_KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed worker to be gone at exit
SPAWN_RETRY = 1.0  # seconds before a worker that could not be started (EMFILE, EAGAIN) is tried again
RETRY_UNAVAILABLE = 1.0  # seconds before a message a worker could not read (its transport away) is handed out again

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGALRM,
                 signal.SIGVTALRM, signal.SIGPROF)
STOP_NOW_SIGNALS = (signal.SIGQUIT,)
POOL_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)  # reload, one worker more, one fewer
IGNORED_SIGNALS = {
    signal.SIGUSR1: "no action is bound to it",
    signal.SIGUSR2: "no action is bound to it",
}
PLANNED_STOPS = (StopReason.RECYCLE, StopReason.DRAIN, StopReason.TERMINATED, StopReason.RELOAD, StopReason.RESIZE)


class Supervisor:
    def __init__(self, config: Config, *, clock: Any = time.monotonic,
                 handlers: dict[str, Any] | None = None, lock_fd: int | None = None,
                 on_started: Any = None, reread: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reread = reread  # SIGHUP: the config file again, with the command line's overrides
        self.handler_objects = handlers
        self.clock = clock
        self.local = LocalRoot(config.spool.root)
        self.source = make_source(config, clock=clock, on_hint=self._wake)
        self.scheduler = Scheduler(config, make_outbox)  # [[schedule]]: publish_due in run_timers
        self.pool_size = config.pool.workers
        self.workers: list[WorkerHandle] = []
        self.restarts = [0] * self.pool_size
        self.next_spawn = [0.0] * self.pool_size
        self.boot_failures = 0
        self.last_boot_error = ""
        self.crash_streak = [0] * self.pool_size
        self.external: dict[tuple[str, str], dict[str, Any]] = {}
        self.totals = {"handled": 0, "failed": 0, "duplicates": 0, "poisoned": 0, "requeued": 0}
        self.returned = 0  # messages put back since the drain began
        self.metrics = PoolMetrics(Labels(config))  # /metrics' counters, added up from the workers' reports
        self.probe = LoopProbe(self._wake)  # the HTTP thread's questions, answered between two steps
        self.http: ProbeServer | None = None
        self._source_stats: dict[str, Any] | None = None  # the transport's stats at the last status write
        self.generation = 0  # the config the workers run; a reload's new workers carry the next one
        self._generations = itertools.count(1)
        self.reloading: Reload | None = None
        self._reload_pending = False  # a SIGHUP to act on once the pool stands
        self.reloads = ReloadLog()
        self._signals: deque[int] = deque()
        self._seq = 0
        self._wake_r, self._wake_w = portable.pipe()
        self._waitset = WaitSet()
        self._ctx = mp_context(fork=handlers is not None)
        self._lock_fd: int | None = lock_fd  # the compat API takes the lock before it forks us
        self._on_started = on_started  # called once every worker is ready (the compat API waits for it)
        self._holds_acks = False  # the transport's last word on it, told to every worker
        self._source_busy = False  # the transport has sliced work left (a rescan, pruning): no waiting
        self._room = 0  # what the workers could take after the last dispatch (a fetching transport asks for it)
        self._spawn_failing = False  # a worker could not be started (logged once until one starts again)
        self.state = "starting"
        self.exit_code = EXIT_OK
        self.halt_reason = ""
        self.announced = False
        self.started_wall = time.time()
        self.drain_deadline = 0.0
        interval = config.heartbeat.interval
        self.tick = min(0.25, interval / 4)
        self.next_status = 0.0
        self.next_renew = 0.0
        self.next_housekeeping = 0.0
        self.watchdog = watchdog_interval()  # systemd's WatchdogSec=, halved; None when not asked
        self.next_watchdog = 0.0

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> int:
        """Boot, loop until drained or halted, clean up; returns the exit code.

        Raises AlreadyRunning, before touching anything, when another
        supervisor owns the root.
        """
        self.local.ensure(0o700 if self.config.spool.mode == "private" else 0o2750)
        if self._lock_fd is None:
            self._lock_fd = self.local.acquire_lock()
        else:
            self.local.record_lock_owner(self._lock_fd)
        try:
            if self.config.http.listen:  # a taken port stops the start before any worker runs
                self.http = ProbeServer(self.config.http, self.probe)
                self.http.start()
            self.write_starting_status()
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
        proctitle.Title().set(proctitle.supervisor(self.local.root))
        self._install_signals()
        self.wait_for_old_workers()
        recovered = self.source.open()
        now = self.clock()
        for slot in range(self.pool_size):
            self.spawn(slot, now)
        log.info("%d messages queued at start (%d recovered from processing/)", self.source.backlog(), recovered)
        self.state = "running"

    def wait_for_old_workers(self) -> None:
        """Workers of a dead supervisor hold workers.lock shared until they exit: wait for them.

        After a grace period the holders still there are killed, once, and
        only those proven to hold the lock (never a process that merely
        reused a listed pid): found through /proc/locks, or through the record
        of its workers the previous supervisor kept (where there is no /proc);
        then start-up goes on regardless, so a lock leaked into some unrelated
        process can delay a restart but never block it.
        """
        fd = os.open(self.local.workers_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        grace = 2 * self.config.heartbeat.interval + 1.0
        deadline = time.monotonic() + grace
        next_status = time.monotonic() + self.config.heartbeat.interval
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
                    for pid in kill_lock_holders(fd, lock_holders(fd), self.local.recorded_workers()):
                        log.warning("killed orphaned worker pid=%d of a previous supervisor", pid)
                    killed = True
                    deadline = time.monotonic() + grace
                if time.monotonic() >= next_status:  # still "starting", not stale: senders keep waiting
                    next_status = time.monotonic() + self.config.heartbeat.interval
                    self.write_starting_status()
                time.sleep(0.05)
        finally:
            os.close(fd)

    def shutdown(self) -> None:
        for worker in list(self.workers):
            # A worker whose exit status was lost may still run: it is ended before
            # what it held goes back, so nothing is handled and requeued at once.
            if not worker.has_exited():
                worker.signal(signal.SIGKILL)
                if not worker.wait_gone(SHUTDOWN_KILL_WAIT):
                    log.error("worker pid=%d did not end after SIGKILL; what it held stays claimed until the "
                              "next start", worker.pid)
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
        self.source.close()
        self.scheduler.close()
        if self.http is not None:
            self.http.close()
        log.info("Enhanced IPC system stopped (%s)", self.halt_reason or "drained")
        self._waitset.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the loop ---------------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """One iteration: block in one wait, then run every non-blocking step."""
        source = self.source
        waitables: list[Waitable] = [(self._wake_r, READABLE, "wake", self)]
        waitables += [(fd, READABLE, "source", source) for fd in source.filenos()]
        for worker in self.workers:
            death = worker.death_fd
            if death is not None:
                waitables.append((death, READABLE, "death", worker))
            if worker.results.open:
                waitables.append((worker.results.fd, READABLE, "results", worker))
            if worker.tasks.pending:
                waitables.append((worker.tasks.fd, WRITABLE, "tasks", worker))
        if timeout is None:
            timeout = 0.0 if self._source_busy else self.scheduler.wait(self.tick)  # sliced work: come straight back
        ready = self._waitset.wait(waitables, timeout)
        if self._wake_r in ready:
            self._drain_wake_pipe()
        self.handle_signals()
        self.flush_tasks(ready)
        self.read_results(ready)
        now = self.clock()
        self._source_busy = source.poll(now, ready, self._room)
        self.reap_workers(now, ready)
        self.kill_stale_workers(now)
        self.recycle_workers()
        self.spawn_missing_workers(now)
        self.dispatch()
        self.run_timers(now)
        if self.probe.asked():
            self.probe.answer(self.answer_probe)

    def _wake(self) -> None:
        """A watcher thread has news for the loop (thread-safe: one byte into the wake-up pipe)."""
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

        for signum in (*DRAIN_SIGNALS, *STOP_NOW_SIGNALS, *POOL_SIGNALS, *IGNORED_SIGNALS):
            signal.signal(signum, record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            name = signal.Signals(signum).name
            if signum in IGNORED_SIGNALS:
                log.warning("received %s: ignored (%s)", name, IGNORED_SIGNALS[signal.Signals(signum)])
            elif signum in POOL_SIGNALS:
                if self.state != "running":
                    log.warning("received %s while %s: ignored", name, self.state)
                elif signum == signal.SIGHUP:
                    self.begin_reload()
                else:
                    self.resize(self.pool_size + (1 if signum == signal.SIGTTIN else -1))
            elif signum in STOP_NOW_SIGNALS or (self.state == "draining" and signum == signal.SIGINT):
                log.warning("received %s%s: stopping now; held messages go back to messages/",
                            "a second " if signum == signal.SIGINT else "", name)
                if self.state == "running":
                    self.begin_drain()
                self.drain_deadline = 0.0
            elif self.state == "running":
                log.info("received %s: draining (grace %gs)", name, self.config.pool.shutdown_grace)
                self.begin_drain()
            elif self.state == "draining":  # a service manager may send it twice: not a reason to cut it short
                log.info("received %s again: the drain goes on (SIGINT or SIGQUIT stops now)", name)

    def begin_drain(self) -> None:
        notify("STOPPING=1", "STATUS=draining")
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
                try:
                    self.on_done(worker, seq, outcome, info)
                except Exception:  # one message's fault never leaves the rest of the batch unfinished
                    log.exception("cannot finish delivery %d of worker pid=%d; if its file is left in processing/, "
                                  "the next rescans put it back", seq, worker.pid)
            if message[2] is not None:
                self.metrics.absorb(message[2])
        elif kind == "hb":
            worker.last_heartbeat = now
            worker.current_message = message[1].get("payload", {}).get("currentMessage")
        elif kind == "stopping":  # SIGTERM reached the worker itself (kill, or the whole process group)
            if worker.stop_reason is None:
                log.info("worker pid=%d slot=%d received %s: it finishes its current message and returns "
                         "the rest", worker.pid, worker.slot, message[1])
                worker.stop_reason = StopReason.TERMINATED
                worker.state = WorkerState.STOPPING
                worker.stop_by = now + worker.config.pool.shutdown_grace + worker.config.pool.kill_grace
        elif kind == "retiring":  # reached its max_tasks: it returned the rest and exits by itself
            if worker.stop_reason is None:
                log.info("recycling worker pid=%d after %d tasks", worker.pid, message[1])
                worker.stop_reason = StopReason.RECYCLE
                worker.restart_reason = "recycle-tasks"
                worker.state = WorkerState.STOPPING
                worker.stop_by = self.clock() + worker.config.pool.shutdown_grace
        elif kind == "ready":
            worker.ever_ready = True
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
        if outcome == "unsettled":  # not decodable yet, and still changing: back, and offered when settled
            self._requeue(delivery, counted=False, later=self.config.spool.settle_time, returned=False)
        elif outcome == "returned":  # never started: the worker is stopping, or the transport was away
            self._requeue(delivery, counted=False, later=RETRY_UNAVAILABLE if info else 0.0)
        else:
            self._count_outcome(worker, outcome, delivery.group, info)
            self.source.done(delivery.group, delivery.name, outcome,
                                 info[-1] if outcome == "heartbeat" and info is not None else info)

    def _count_outcome(self, worker: WorkerHandle, outcome: str, group: str, info: Any) -> None:
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
            self.external[(group, str(pid))] = {"status": status, "at": time.time()}
            if len(self.external) > MAX_EXTERNAL_HEARTBEATS:  # bounded: writers choose the keys
                del self.external[min(self.external, key=lambda k: self.external[k]["at"])]

    # -- dispatch ------------------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand what the transport has to the workers with room, by their live load."""
        if self.state != "running":
            return
        prefetch = self.config.pool.prefetch
        # Top a worker up only once half its prefetch is free: fewer, larger batches.
        refill_at = max(1, prefetch // 2)
        load = {w: w.outstanding() for w in self.workers if w.state is WorkerState.READY and w.tasks.open}
        ready = [w for w, n in load.items() if prefetch - n >= refill_at]
        source = self.source
        wanted = sum(prefetch - load[w] for w in ready)
        self._room = wanted
        backlog = source.backlog()
        if not ready or not backlog:
            return
        # Even shares: no worker holds more than its part of all the work pending or
        # outstanding, so a burst never queues behind one worker. Until the pool first
        # stands, workers still booting get their part too (a backlog at start is split);
        # later, a replacement booting does not hold work back from the others.
        booting = 0 if self.announced else sum(
            1 for w in self.workers if w.stop_reason is None and w.state is WorkerState.STARTING)
        share = -(-(backlog + sum(load.values())) // (len(load) + booting))
        ready.sort(key=load.__getitem__)
        for worker in ready:
            room = min(prefetch, share) - load[worker]
            if room <= 0:
                continue
            batch: list[tuple[int, str, str, int]] = []
            for group, ref, deliveries in source.take(room):
                self._seq += 1
                worker.held[self._seq] = Delivery(self._seq, group, ref, deliveries)
                batch.append((self._seq, group, ref, deliveries))
            if batch and not worker.send(("run", batch)):
                log.warning("worker pid=%d channel closed while dispatching", worker.pid)
            wanted -= len(batch)
            if not source.backlog():
                break
        # What was handed out fills room: a transport that fetches ahead (Redis) must not read for room that
        # is gone until the next dispatch (with prefetch 1 it took a message into a busy supervisor, out of
        # reach of idle hosts).
        self._room = max(0, wanted)

    # -- supervision --------------------------------------------------------------------------

    def spawn(self, slot: int, now: float) -> None:
        inherited: tuple[int, ...] = ()
        if self.handler_objects is not None:  # forked: close what is the supervisor's, siblings' channels too
            own = (self._lock_fd, self._wake_r, self._wake_w, self._waitset.fileno(), *self.source.filenos(),
                   *(self.http.filenos() if self.http is not None else ()))
            siblings = [fd for w in self.workers for fd in (w.tasks.fd, w.results.fd, w.process.sentinel, w.pidfd)]
            inherited = tuple(fd for fd in (*own, *siblings) if fd is not None)
        max_tasks = self.config.pool.max_tasks_per_worker
        if max_tasks:  # jittered, so workers started together do not all retire together
            max_tasks += random.randint(0, max_tasks // 10)  # up to 10%: none below 10 tasks
        worker = spawn_worker(self._ctx, self.config, slot, os.getpid(), now, self.handler_objects, inherited,
                              max_tasks)
        worker.generation = self.generation
        if self._holds_acks:
            worker.shared[SLOT_ACK_HOLDS] = 1.0
        self.workers.append(worker)
        self.record_workers()

    def record_workers(self) -> None:
        """Who the workers are (pid, start time), kept on disk: if this supervisor dies, its successor finds
        them without /proc (see wait_for_old_workers)."""
        self.local.record_workers({w.pid: w.create_time for w in self.workers if w.pid})

    def spawn_missing_workers(self, now: float) -> None:
        if self.state != "running":
            return
        # After a boot failure, one worker at a time tries again: the pool halts after
        # max_boot_failures without a crowd of workers still booting behind the last one.
        probing = self.boot_failures > 0
        if probing and any(w.state is WorkerState.STARTING for w in self.workers):
            return
        # A worker being stopped or killed keeps its slot until it has ended (no overlap), except
        # for the old generation of a reload and a slot SIGTTOU took away.
        occupied = {w.slot for w in self.workers if w.generation == self.generation}
        for slot in range(self.pool_size):
            if slot not in occupied and now >= self.next_spawn[slot]:
                try:
                    self.spawn(slot, now)
                except OSError as exc:  # out of descriptors or processes: the loop goes on, and tries again
                    if not self._spawn_failing:
                        log.error("cannot start a worker for slot %d (%s); trying again every %gs", slot,
                                  exc.strerror or exc, SPAWN_RETRY)
                    self._spawn_failing = True
                    self.next_spawn[slot] = now + SPAWN_RETRY
                    return
                if self._spawn_failing:
                    self._spawn_failing = False
                    log.info("workers start again (slot %d)", slot)
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
            was_starting = not worker.ever_ready
            worker.state = WorkerState.DEAD
            code = worker.exit_code
            how = describe_exit(code, killed_by_us=worker.kill_at is not None)
            reason = worker.stop_reason
            # A worker we stopped for a timeout or a hang that ran out of its own grace before our
            # SIGKILL came (kill_grace > shutdown_grace) is blamed all the same, or it never turns poison.
            if reason in PLANNED_STOPS or (code == EXIT_WORKER_GRACE and reason is None):
                why = reason.value if reason is not None else "stopping"
                if code == EXIT_WORKER_GRACE:
                    why += ", shutdown grace ran out mid-handler"
                log.info("worker stopped pid=%d slot=%d (%s, %s)", worker.pid, worker.slot, why, how)
                if worker.restart_reason is not None:
                    self.metrics.restart(worker.restart_reason)
                self._release_held(worker, blame=False)
                self.next_spawn[worker.slot] = now
            elif was_starting and self.reloading is not None and worker.generation == self.reloading.generation:
                # Any death of a new worker before it is ready (a boot error, the OOM killer, an
                # import that hangs past the boot timeout) ends the reload; the old pool stays.
                self._release_held(worker, blame=False)
                detail = (worker.boot_error or how).strip()
                log.error("a worker of the reloaded config failed to boot pid=%d slot=%d (%s): %s",
                          worker.pid, worker.slot, how, detail, extra=MULTILINE)
                # Named as `ipcpool check` names it: the file, [handlers], the problem.
                where = f"{self.config.path}: [handlers] " if worker.boot_error else ""
                self.abort_reload(f"a new worker failed to boot: {where}{detail.splitlines()[0]}")
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
            self.record_workers()
            self.next_status = 0.0

    def read_leftovers(self, worker: WorkerHandle) -> None:
        """Results a worker sent just before it ended still count."""
        for message in worker.results.read():
            self.on_worker_message(worker, message)

    def on_boot_failure(self, worker: WorkerHandle, how: str, now: float) -> None:
        self.boot_failures += 1
        self.metrics.restart("boot")
        self._release_held(worker, blame=False)
        detail = (worker.boot_error or how).strip()
        limit = self.config.pool.max_boot_failures
        # The traceback once; the same failure again is named by its first line.
        shown = detail if detail != self.last_boot_error else f"{detail.splitlines()[0]} (the same error again)"
        self.last_boot_error = detail
        log.error("worker failed to boot pid=%d slot=%d (%s), failure %d of %d: %s",
                  worker.pid, worker.slot, how, self.boot_failures, limit, shown, extra=MULTILINE)
        if self.boot_failures >= limit:
            self.halt(EXIT_WORKER_BOOT, f"workers cannot boot: {detail.splitlines()[0]}")
            return
        self.next_spawn[worker.slot] = now + BOOT_BACKOFF * 2 ** (self.boot_failures - 1)

    def on_crash(self, worker: WorkerHandle, how: str, now: float) -> None:
        reason = worker.stop_reason
        if reason is StopReason.TIMEOUT:
            how = f"killed after handler_timeout ({worker.config.pool.handler_timeout:g}s); {how}"
        elif reason is StopReason.HUNG:
            how = f"killed after missing heartbeats; {how}"
        log.error("worker died pid=%d slot=%d: %s; restarting", worker.pid, worker.slot, how)
        self.metrics.restart("timeout" if reason is StopReason.TIMEOUT else "hung" if reason is StopReason.HUNG
                             else "crash")
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
        """Everything an ended worker held goes back; the running delivery is blamed if asked."""
        current, _started = worker.current() if blame else (None, 0.0)
        held, worker.held = list(worker.held.values()), OrderedDict()
        for delivery in held:
            try:
                if delivery is current:
                    self.record_failed_delivery(delivery, worker, how)
                else:
                    self._requeue(delivery)
            except Exception:  # one message's fault never strands the others the worker held
                log.exception("cannot put back group=%s file=%s (held by worker pid=%d); if it is left in "
                              "processing/, the next rescans put it back", delivery.group, delivery.name, worker.pid)

    def _requeue(self, delivery: Delivery, *, counted: bool = True, later: float = 0.0,
                 returned: bool = True) -> None:
        self.source.requeue(delivery.group, delivery.name, later=later)
        if returned:  # not a file still being written (unsettled): that one was never a delivery
            self.metrics.returned_to_queue(delivery.group)
        if counted:
            self.totals["requeued"] += 1
        if self.state != "running":
            self.returned += 1

    def record_failed_delivery(self, delivery: Delivery, worker: WorkerHandle, how: str) -> None:
        """This delivery killed or hung its worker: counted against the message; poison at the limit."""
        group, ref = delivery.group, delivery.name
        history = self.source.record_failure(group, ref, {
            "delivery": delivery.deliveries, "workerPid": worker.pid, "ended": how, "time": now_iso()})
        limit = self.config.pool.max_deliveries
        if len(history) < limit:
            self._requeue(delivery)
            return
        summary = self.source.summarize(group, ref)
        record = {"id": summary.id, "type": summary.type, "attempts": len(history),
                  "reason": f"poison message: {len(history)} deliveries killed or hung a worker "
                            f"([pool] max_deliveries = {limit})",
                  "deliveries": history}
        if self.source.quarantine(group, ref, record, nack_body(group, record, summary, "poisoned")):
            log.error("Poison message moved to errors/ id=%s type=%s group=%s file=%s after %d deliveries",
                      summary.shown_id, summary.shown_type, group, ref, len(history), extra={"outcome": "poisoned"})
            self.totals["poisoned"] += 1
            self.metrics.count(group, summary.type, "poisoned")

    def kill_stale_workers(self, now: float) -> None:
        for worker in self.workers:
            pool = worker.config.pool  # each judged by the config it runs (two live during a reload)
            hb = worker.config.heartbeat
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
            silence_limit = hb.miss_limit * hb.interval
            if now - worker.last_heartbeat > silence_limit:
                # Its heartbeats may wait unread in its pipe: the loop itself was held up (stopped and continued,
                # the wait after came back empty: an interrupted epoll past its deadline). Read them first.
                self.read_leftovers(worker)
            silent = now - worker.last_heartbeat
            if silent > silence_limit:
                self.kill_worker(worker, StopReason.HUNG, f"no heartbeat for {silent:.1f}s")
                continue
            current, started = worker.current()
            if current is not None and now - started > pool.handler_timeout:
                said = self.source.summarize(current.group, current.name)
                self.kill_worker(worker, StopReason.TIMEOUT,
                                 f"handler ran {now - started:.1f}s (handler_timeout {pool.handler_timeout:g}s) "
                                 f"id={said.shown_id} type={said.shown_type} group={current.group} file={current.name}")

    def kill_worker(self, worker: WorkerHandle, reason: StopReason, why: str) -> None:
        """TERM now, KILL after [pool] kill_grace."""
        log.warning("killing worker pid=%d slot=%d (%s): %s", worker.pid, worker.slot, reason.value, why)
        worker.stop_reason = reason if worker.stop_reason is not StopReason.DRAIN else StopReason.DRAIN
        worker.state = WorkerState.STOPPING
        worker.signal(signal.SIGTERM)
        worker.kill_at = self.clock() + worker.config.pool.kill_grace

    def stop_worker(self, worker: WorkerHandle, reason: StopReason) -> None:
        """Ask a worker to finish its current delivery, return the rest and exit."""
        worker.stop_reason = reason
        worker.state = WorkerState.STOPPING
        if reason in (StopReason.RECYCLE, StopReason.RELOAD, StopReason.RESIZE):
            pool = worker.config.pool
            worker.stop_by = self.clock() + pool.handler_timeout + pool.shutdown_grace
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
                worker.restart_reason = "recycle-memory"

    # -- reload and resizing (gunicorn's SIGHUP, SIGTTIN, SIGTTOU) ------------------------------------------

    def begin_reload(self) -> None:
        """SIGHUP: new workers on the re-read config; the old ones exit once every new one is ready.

        One at a time: a SIGHUP during a reload, or before the pool first stood, is kept and
        acted on once the pool stands (the config is read then, so the latest edit counts).
        """
        if self.reloading is not None or not self.announced:
            if not self._reload_pending:
                log.info("received SIGHUP %s: the reload starts once it is done",
                         "during a reload" if self.reloading is not None else "while the workers boot")
            self._reload_pending = True
            return
        self._reload_pending = False
        notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        if self._reread is None:
            self.finish_reload(False, "no config file to re-read (started from the API)")
            return
        try:
            new = self._reread()
        except ConfigError as exc:
            self.finish_reload(False, str(exc))
            return
        refused = restart_only_change(self.config, new)
        if refused is not None:
            self.finish_reload(False, f"{self.config.path}: {refused}")
            return
        self.reloading = Reload(next(self._generations), self.config, self.generation, self.pool_size)
        self.config, self.generation = new, self.reloading.generation
        self.metrics.labels = Labels(new)
        self._resize_slots(new.pool.workers)
        log.info("received SIGHUP: reloading %s; starting %d workers on it (generation %d)", new.path,
                 new.pool.workers, self.generation)

    def check_reload(self) -> None:
        """Every new worker ready: the old generation finishes what it holds and exits."""
        if self.reloading is None:
            if self._reload_pending and self.announced and self.state == "running":
                self.begin_reload()
            return
        new = [w for w in self.workers if w.generation == self.generation and w.stop_reason is None]
        if len(new) < self.pool_size or any(w.state is not WorkerState.READY for w in new):
            return
        for worker in self.workers:
            if worker.generation != self.generation and worker.stop_reason is None:
                self.stop_worker(worker, StopReason.RELOAD)
        setup_logging(self.config.log.format)
        self.finish_reload(True, f"{self.pool_size} workers on the new config (generation {self.generation})")

    def abort_reload(self, reason: str) -> None:
        """A new worker died before it was ready: the new generation goes; the old pool, config and size stay."""
        reloading = self.reloading
        assert reloading is not None
        for worker in self.workers:
            if worker.generation == reloading.generation and worker.stop_reason is None:
                self.stop_worker(worker, StopReason.RELOAD)
        self.config, self.generation = reloading.previous, reloading.previous_generation
        self.metrics.labels = Labels(self.config)
        self._resize_slots(reloading.pool_size)
        self.finish_reload(False, reason)

    def finish_reload(self, ok: bool, reason: str) -> None:
        self.reloading = None
        self.reloads.record(ok, reason)
        self.next_status = 0.0  # `ipcpool reload` is waiting for the outcome in status.json
        if ok:
            log.info("reload done: %s", reason)
        else:
            log.error("reload failed, the running pool and its config stay: %s", reason)
        notify("READY=1", f"STATUS=reload {'done' if ok else 'failed'}: {reason.splitlines()[0]}")

    def resize(self, size: int) -> None:
        """SIGTTIN / SIGTTOU: one worker more or fewer (never none); a reload goes back to [pool] workers."""
        if self.reloading is not None:
            log.warning("received SIGTTIN/SIGTTOU during a reload: ignored (send it again once the reload is done)")
            return
        if size < 1:
            log.warning("received SIGTTOU with one worker left: ignored (a pool keeps at least one)")
            return
        log.info("resizing the pool: %d -> %d workers", self.pool_size, size)
        self._resize_slots(size)
        for worker in self.workers:
            if worker.slot >= size and worker.stop_reason is None:
                self.stop_worker(worker, StopReason.RESIZE)

    def _resize_slots(self, size: int) -> None:
        self.pool_size = size
        for per_slot in (self.restarts, self.next_spawn, self.crash_streak):
            per_slot.extend([0] * (size - len(per_slot)))

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
        self.check_reload()
        if self.state == "running" and not self.announced and self._all_ready():
            self.announced = True
            log.info("Enhanced IPC system started root=%s groups=%s workers=%d",
                     self.local.root, ",".join(sorted(self.source.stats()["groups"])), len(self.workers))
            notify("READY=1", f"STATUS={len(self.workers)} workers ready")
            if self._on_started is not None:
                self._on_started()
        holds = bool(getattr(self.source, "holds_acks", False))
        if holds != self._holds_acks:
            self._holds_acks = holds
            for worker in self.workers:  # their ack checks then also look for messages held for their acks
                worker.shared[SLOT_ACK_HOLDS] = 1.0 if holds else 0.0
        if self.watchdog is not None and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog
            notify("WATCHDOG=1")  # from the loop itself: a stuck loop stops sending it
        if now >= self.next_renew:
            self.next_renew = now + self.config.heartbeat.interval
            self.source.renew([(d.group, d.name) for w in self.workers for d in w.held.values()])
        if now >= self.next_status:
            self.next_status = now + self.config.heartbeat.interval
            self.reap_workers(now)
            self.read_processes()
            try:
                self.write_status(now)
            except OSError as exc:
                log.error("cannot write status.json: %s", exc)
        if self.state == "running":
            self.scheduler.publish_due(time.time(), self.config.schedules)
        if now >= self.next_housekeeping and self.state == "running":
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self.source.housekeeping({w.pid for w in self.workers if w.pid})
            cutoff = time.time() - EXTERNAL_HEARTBEAT_TTL
            for key in [k for k, v in self.external.items() if v["at"] < cutoff]:
                del self.external[key]

    def _all_ready(self) -> bool:
        return len(self.workers) == self.pool_size and all(w.state is WorkerState.READY for w in self.workers)

    def read_processes(self) -> None:
        for worker in self.workers:
            if worker.probe is None and worker.pid:
                worker.probe = ProcessProbe(worker.pid)
            if worker.probe is not None:
                worker.reading = worker.probe.read()

    # -- status --------------------------------------------------------------------

    def snapshot(self, now: float, transport: dict[str, Any] | None = None) -> PoolSnapshot:
        """The pool at this moment, for status.json, /metrics and /readyz (``transport``: the transport's stats
        as last read, when a fresh read would cost a round trip)."""
        workers = []
        for w in self.workers:
            current, started = w.current()
            reading, probe = w.reading, w.probe
            workers.append(WorkerView(
                pid=w.pid, slot=w.slot, state=w.state.value, last_heartbeat=w.last_heartbeat,
                rss_mb=reading.rss_mb if reading else None, cpu_percent=reading.cpu_percent if reading else None,
                create_time=probe.create_time() if probe is not None else None, handled=w.handled,
                failed=w.failed, restarts=self.restarts[w.slot], told=w.current_message,
                load={group: GroupLoad(*counts) for group, counts in w.load_by_group().items()},
                current=Running(current.seq, current.group, current.name, started) if current else None))
        return PoolSnapshot(
            state=self.state, pid=os.getpid(), create_time=create_time_of(os.getpid()),
            started_wall=self.started_wall, wall=time.time(), now=now, interval=self.config.heartbeat.interval,
            root=str(self.local.root), backend=self.source.backend,
            http=self.http.address if self.http is not None else None, expected_workers=self.pool_size,
            booted=self.announced, spool_root=self.config.spool.root if self.source.backend == "spool" else None,
            workers=tuple(workers), finished=self.metrics.by_group(), totals=dict(self.totals),
            reloads=self.reloads.as_status(self.generation, self.reloading is not None),
            external=tuple(ExternalHeartbeat(group, pid, record["status"], record["at"])
                           for (group, pid), record in sorted(self.external.items())),
            transport=self.source.stats() if transport is None else transport,
            schedules=self.scheduler.view(time.time()))

    def answer_probe(self, lag: float) -> Answer:
        """An HTTP probe's question (/metrics, /healthz, /readyz), answered from the loop thread."""
        # The queues as read at the last status write (every [heartbeat] interval): a probe never
        # waits on a Redis round trip, so a slow or partitioned Redis cannot fail /healthz by itself.
        snapshot = self.snapshot(self.clock(), self._source_stats)
        status = status_record(snapshot)
        return Answer(Scrape(self.metrics.snapshot(), status, lag, judge(status, own=snapshot)))

    def write_starting_status(self) -> None:
        """Say "starting" at once (the previous run's final record would say nobody is here): a sender reading
        status.json waits for this supervisor instead of giving up on it while it recovers and boots."""
        try:
            write_status(self.local.root, status_record(self.snapshot(self.clock(), {"groups": {}, "transport": {}})),
                         mode=0o600 if self.config.spool.mode == "private" else 0o640)
        except OSError as exc:
            log.error("cannot write status.json: %s", exc)

    def write_status(self, now: float) -> None:
        self._source_stats = self.source.stats()
        snapshot = self.snapshot(now, self._source_stats)
        status = status_record(snapshot)
        write_status(self.local.root, status, mode=0o600 if self.config.spool.mode == "private" else 0o640)
        if self.state not in ("stopped", "halted", "failed"):
            self.source.announce(status)  # a transport shared by hosts shows every supervisor
        if self.announced and self.state == "running" and self.reloading is None:
            notify(status_line(status, judge(status, own=snapshot)))


def _is_boot_failure(code: int | None, reason: StopReason | None) -> bool:
    """Died on its own before ready: a boot error exit, any error exit, or a fatal signal it raised."""
    if reason is StopReason.BOOT_TIMEOUT:
        return True
    if reason is not None or code is None:
        return False
    if code > 0:
        return True
    return -code in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)
