"""The supervisor: one process, one loop, every worker watched, every message accounted for.

Data flow::

    transport (Source) --take--> Dispatcher --Run(receipts)--> worker i (its task pipe)
    worker i --Done(results) · Heartbeat · Stopping · Retiring (its result pipe)--> Lifecycle.on_report
        --> Accounting: Source.done / requeue / quarantine (poison)

The loop blocks in one call, a selector's wait (:class:`WaitSet`: epoll on
Linux, kqueue on macOS) over every worker's result pipe and process (its
status pipe, or its pidfd once the forkserver that passes statuses on is
gone), task pipes with a backlog, the transport's descriptors (inotify for
the spool, a socket for Redis), and the wake-up pipe (fed by signal handlers,
and by a watcher thread when one is configured), then runs non-blocking
steps named by verbs (:meth:`Supervisor.step`). Nothing in it blocks on one
worker: the pipes are written and read without waiting (``ipcpool.channel``).

The supervisor is the pool; its parts share one :class:`PoolState`:
``dispatch`` (by live load), ``accounting`` (what each message becomes,
poison included), ``lifecycle`` (spawning, reports, reaping), ``limits``
(heartbeats, timeouts, memory), ``reload`` (SIGHUP, SIGTTIN, SIGTTOU) and
``orphans`` (an old run's workers). Where messages live is the transport's
business (``ipcpool.transport``). It never imports or runs handler code.

Signals, as gunicorn's arbiter takes them, one ``handle_<name>`` method each:
SIGTERM and SIGINT drain (a second SIGINT, or SIGQUIT, stops now: held
messages go back); SIGHUP reloads; SIGTTIN and SIGTTOU add and remove one
worker; SIGUSR1 and SIGUSR2 are logged and ignored, so a signal to the whole
process group never kills the pool without a word. ``status.json`` always
ends in the final state.

Operators' interfaces hang off the loop without reaching into it: the HTTP
probes (``ipcpool.ops.probes``) ask the loop and wait for its answer, systemd
hears ``READY=1``/``RELOADING=1``/``STOPPING=1``/``WATCHDOG=1``
(``ipcpool.ops.sdnotify``), and /metrics' counts come from the workers' own
reports (``ipcpool.ops.tally``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ipcpool import portable
from ipcpool.config import Config
from ipcpool.localroot import LocalRoot, write_status
from ipcpool.ops import proctitle
from ipcpool.ops.health import ProcessProbe, create_time_of, judge
from ipcpool.ops.probes import Answer, LoopProbe, ProbeServer
from ipcpool.ops.sdnotify import notify, status_line, watchdog_interval
from ipcpool.ops.status import ExternalHeartbeat, GroupLoad, PoolSnapshot, Running, WorkerView, status_record
from ipcpool.ops.tally import Labels, PoolMetrics, Scrape
from ipcpool.pool.accounting import Accounting
from ipcpool.pool.dispatch import Dispatcher
from ipcpool.pool.handle import StopReason, WorkerState, mp_context
from ipcpool.pool.lifecycle import Lifecycle
from ipcpool.pool.limits import Limits
from ipcpool.pool.orphans import wait_for_old_workers
from ipcpool.pool.protocol import SLOT_DRAIN_BY, SLOT_LOOP_AT
from ipcpool.pool.reload import Reloader
from ipcpool.pool.scheduler import Scheduler
from ipcpool.pool.state import PoolState, SupervisorState
from ipcpool.transport import make_outbox, make_source
from ipcpool.waitset import READABLE, WRITABLE, Waitable, WaitSet

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 60.0
SHUTDOWN_KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed worker to be gone at exit
LOOP_ERROR_PAUSE = 0.25  # an unexpected error in the loop: this long before the next step (never spin)
LOOP_STAMP_EVERY = 0.05  # seconds between the workers' "the loop runs" stamps (SLOT_LOOP_AT)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGALRM,
                 signal.SIGVTALRM, signal.SIGPROF)
IGNORED_SIGNALS = {
    signal.SIGUSR1: "no action is bound to it",
    signal.SIGUSR2: "no action is bound to it",
}
HANDLED_SIGNALS = (*DRAIN_SIGNALS, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, *IGNORED_SIGNALS)
POOL_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)  # acted on only while running

RUNNING, DRAINING = SupervisorState.RUNNING, SupervisorState.DRAINING


class Supervisor:
    def __init__(self, config: Config, *, clock: Any = time.monotonic,
                 handlers: dict[str, Any] | None = None, lock_fd: int | None = None,
                 on_started: Any = None, reread: Callable[[], Config] | None = None) -> None:
        self.local = LocalRoot(config.spool.root)
        self.clock = clock
        self.pool = pool = PoolState(config, make_source(config, clock=clock, on_hint=self._wake),
                                     PoolMetrics(Labels(config)), clock, config.pool.workers)
        self.source = pool.source
        self.scheduler = Scheduler(config, make_outbox)  # [[schedule]]: publish_due in run_timers
        self.accounting = Accounting(pool)
        self.dispatcher = Dispatcher(pool.source)
        self.reloader = Reloader(pool, reread)
        self._wake_r, self._wake_w = portable.pipe()
        self._waitset = WaitSet()
        self.lifecycle = Lifecycle(pool, self.accounting, self.reloader, self.local,
                                   mp_context(fork=handlers is not None), handlers=handlers, own_fds=self._own_fds,
                                   forget=self._waitset.forget)
        self.limits = Limits(pool, self.lifecycle.read_leftovers)
        self.probe = LoopProbe(self._wake)  # the HTTP thread's questions, answered between two steps
        self.http: ProbeServer | None = None
        self._source_stats: dict[str, Any] | None = None  # the transport's stats at the last status write
        self._signals: deque[int] = deque()
        self._lock_fd: int | None = lock_fd  # the compat API takes the lock before it forks us
        self._on_started = on_started  # called once every worker is ready (the compat API waits for it)
        self._source_busy = False  # the transport has sliced work left (a rescan, pruning): no waiting
        self._source_fault: str | None = None  # the transport's last failure, said once until it changes
        self.started_wall = time.time()
        self.tick = min(0.25, config.heartbeat.interval / 4)
        self._stamped = 0.0  # when the workers were last told the loop runs
        self.next_status = 0.0
        self.next_renew = 0.0
        self.next_housekeeping = 0.0
        self.watchdog = watchdog_interval()  # systemd's WatchdogSec=, halved; None when not asked
        self.next_watchdog = 0.0

    @property
    def config(self) -> Config:
        return self.pool.config

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
        pool = self.pool
        try:
            if self.config.http.listen:  # a taken port stops the start before any worker runs
                self.http = ProbeServer(self.config.http, self.probe)
                self.http.start()
            self.write_starting_status()
            self.boot()
            while pool.state in (RUNNING, DRAINING):
                try:
                    self.step()
                except Exception:
                    log.exception("unexpected error in the supervisor loop; continuing")
                    time.sleep(LOOP_ERROR_PAUSE)  # never spin on a repeating error
        except BaseException as exc:
            pool.state = SupervisorState.FAILED
            pool.halt_reason = pool.halt_reason or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.shutdown()
        return pool.exit_code

    def boot(self) -> None:
        proctitle.Title().set(proctitle.supervisor(self.local.root))
        self.lifecycle.start_helpers()
        self._install_signals()
        wait_for_old_workers(self.local, self.config.heartbeat.interval, self.config.pool.handler_timeout,
                             interrupted=self._told_to_stop, still_starting=self.write_starting_status)
        if self._told_to_stop():
            # Told to stop while an old run's worker may still run a message: what it holds stays where it
            # is (taking processing/ back now could hand that message out twice); the next start finds it.
            log.info("received a signal to stop before the previous supervisor's workers were gone; stopping "
                     "without taking anything up")
            self._signals.clear()
            self.pool.state = SupervisorState.STOPPED
            return
        recovered = self.source.open()
        now = self.clock()
        for slot in range(self.pool.size):
            self.lifecycle.spawn(slot, now)
        log.info("%d messages queued at start (%d recovered from processing/)", self.source.backlog(), recovered)
        self.pool.state = RUNNING

    def shutdown(self) -> None:
        pool = self.pool
        for worker in list(pool.workers):
            # A worker whose exit status was lost may still run: it is ended before
            # what it held goes back, so nothing is handled and requeued at once.
            if not worker.has_exited():
                worker.signal(signal.SIGKILL)
                if not worker.wait_gone(SHUTDOWN_KILL_WAIT):
                    log.error("worker pid=%d did not end after SIGKILL; what it held stays claimed until the "
                              "next start", worker.pid)
                    continue
            self.lifecycle.read_leftovers(worker)
            self.accounting.release_held(worker, blame=False)
            self._waitset.forget(worker)
            worker.close()
        pool.workers.clear()
        if not pool.state.final:
            pool.state = SupervisorState.STOPPED
        if self.accounting.returned:
            log.info("returned %d messages to messages/", self.accounting.returned)
        try:
            self.write_status(self.clock())
        except OSError as exc:
            log.error("cannot write the final status.json: %s", exc)
        self.source.close()
        self.scheduler.close()
        if self.http is not None:
            self.http.close()
        log.info("Enhanced IPC system stopped (%s)", pool.halt_reason or "drained")
        self._waitset.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the loop ---------------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """One iteration: block in one wait, then run every non-blocking step."""
        if timeout is None:
            # Sliced work (a rescan, pruning): come straight back; else wait a tick, or until a schedule is due.
            timeout = 0.0 if self._source_busy else self.scheduler.wait(self.tick)
            due = self.source.wake_at()  # a delayed message due before the tick ends: wake for it
            if due is not None:
                timeout = max(0.0, min(timeout, due - time.time()))
        ready = self._waitset.wait(self._waitables(), timeout)
        if self._wake_r in ready:
            self._drain_wake_pipe()
        self.handle_signals()
        self.flush_tasks(ready)
        self.read_results(ready)
        self._stamp_workers()
        now = self.clock()
        self._source_busy = self._poll_source(now, ready)
        self.lifecycle.reap_ended(now, ready)
        self.limits.kill_stale(now)
        self.limits.recycle(now)
        self.lifecycle.spawn_missing(now)
        self.dispatch()
        self.run_timers(now)
        if self.probe.asked():
            self.probe.answer(self.answer_probe)

    def _stamp_workers(self) -> None:
        """Tell the workers the loop runs (and renews leases): one whose stamp is stale starts nothing."""
        stamp = time.monotonic()
        if stamp - self._stamped >= LOOP_STAMP_EVERY:
            self._stamped = stamp
            for worker in self.pool.workers:
                worker.shared[SLOT_LOOP_AT] = stamp

    def _poll_source(self, now: float, ready: set[int]) -> bool:
        """The transport's turn; a fault of its own never starves reaping, limits, the drain or the timers
        (logged when it first happens, and again only when it changes)."""
        try:
            busy = self.source.poll(now, ready, self.dispatcher.room)
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}"
            if said != self._source_fault:
                log.exception("the transport failed (%s); the pool goes on, and asks it again at each step", said)
            self._source_fault = said
            return False
        if self._source_fault is not None:
            log.info("the transport works again")
            self._source_fault = None
        return busy

    def _waitables(self) -> list[Waitable]:
        waitables: list[Waitable] = [(self._wake_r, READABLE, "wake", self)]
        waitables += [(fd, READABLE, "source", self.source) for fd in self.source.filenos()]
        for worker in self.pool.workers:
            death = worker.death_fd
            if death is not None:
                waitables.append((death, READABLE, "death", worker))
            if worker.results.open:
                waitables.append((worker.results.fd, READABLE, "results", worker))
            if worker.tasks.pending:
                waitables.append((worker.tasks.fd, WRITABLE, "tasks", worker))
        return waitables

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

    def _own_fds(self) -> tuple[int | None, ...]:
        """The supervisor's descriptors, which a forked worker (the compat API's) closes."""
        return (self._lock_fd, self._wake_r, self._wake_w, self._waitset.fileno(), *self.source.filenos(),
                *(self.http.filenos() if self.http is not None else ()))

    def flush_tasks(self, ready: set[int]) -> None:
        """Task pipes that had a backlog and now have room."""
        for worker in self.pool.workers:
            if worker.tasks.pending and worker.tasks.fd in ready:
                worker.tasks.flush()

    def read_results(self, ready: set[int]) -> None:
        for worker in list(self.pool.workers):
            if worker.results.open and worker.results.fd in ready:
                for report in worker.results.read():
                    self.lifecycle.on_report(worker, report)

    def dispatch(self) -> None:
        """Hand what the transport has to the workers with room (nothing once draining)."""
        pool = self.pool
        if not pool.running:
            return
        # Until the pool first stands, workers still booting get their part too (a backlog at start is split).
        booting = 0 if pool.announced else sum(
            1 for w in pool.workers if w.stop_reason is None and w.state is WorkerState.STARTING)
        self.dispatcher.dispatch(pool.ready_workers(), pool.config.pool.prefetch, booting=booting)

    # -- signals (recorded by the handler, acted on here, in the loop) ----------------------------------------

    def _install_signals(self) -> None:
        def record(signum: int, _frame: Any) -> None:
            self._signals.append(signum)  # only record: the loop acts on it

        for signum in HANDLED_SIGNALS:
            signal.signal(signum, record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _told_to_stop(self) -> bool:
        """A drain or stop signal is queued (others wait their turn in the loop: a reload, a resize)."""
        return any(signum in DRAIN_SIGNALS or signum == signal.SIGQUIT for signum in self._signals)

    def handle_signals(self) -> None:
        while self._signals:
            signum = signal.Signals(self._signals.popleft())
            if signum in POOL_SIGNALS and not self.pool.running:
                log.warning("received %s while %s: ignored", signum.name, self.pool.state)
            elif signum in IGNORED_SIGNALS:
                log.warning("received %s: ignored (%s)", signum.name, IGNORED_SIGNALS[signum])
            else:
                getattr(self, f"handle_{signum.name[3:].lower()}", self.handle_drain)(signum)

    def handle_hup(self, _signum: signal.Signals) -> None:
        self.reloader.begin()

    def handle_ttin(self, _signum: signal.Signals) -> None:
        self.reloader.resize(self.pool.size + 1)

    def handle_ttou(self, _signum: signal.Signals) -> None:
        self.reloader.resize(self.pool.size - 1)

    def handle_term(self, signum: signal.Signals) -> None:
        self.handle_drain(signum)

    def handle_quit(self, signum: signal.Signals) -> None:
        self.stop_now(signum)

    def handle_int(self, signum: signal.Signals) -> None:
        if self.pool.state is DRAINING:
            self.stop_now(signum)
        else:
            self.handle_drain(signum)

    def handle_drain(self, signum: signal.Signals) -> None:
        """SIGTERM, a first SIGINT, and the signals whose default would end the process: drain."""
        if self.pool.running:
            log.info("received %s: draining (grace %gs)", signum.name, self.config.pool.shutdown_grace)
            self.begin_drain()
        elif self.pool.state is DRAINING:  # a service manager may send it twice: not a reason to cut it short
            log.info("received %s again: the drain goes on (SIGINT or SIGQUIT stops now)", signum.name)

    def stop_now(self, signum: signal.Signals) -> None:
        log.warning("received %s%s: stopping now; held messages go back to messages/",
                    "a second " if signum == signal.SIGINT else "", signum.name)
        if self.pool.running:
            self.begin_drain()
        self.limits.drain_deadline = 0.0

    def begin_drain(self) -> None:
        notify("STOPPING=1", "STATUS=draining")
        pool = self.pool
        pool.state = DRAINING
        now = self.clock()
        self.limits.drain_deadline = now + self.config.pool.shutdown_grace
        for worker in pool.workers:
            # The worker's own limit (see ipcpool.pool.worker) waits for the drain's deadline too.
            worker.shared[SLOT_DRAIN_BY] = time.monotonic() + self.config.pool.shutdown_grace
            worker.stop(StopReason.DRAIN, now)

    # -- timers ------------------------------------------------------------------------------------------------------

    def run_timers(self, now: float) -> None:
        pool = self.pool
        if pool.state is DRAINING and not pool.workers:
            pool.state = SupervisorState.STOPPED
            return
        self.reloader.check()
        if pool.running and not pool.announced and pool.all_ready():
            self.announce_started()
        self.lifecycle.tell_ack_holds(bool(getattr(self.source, "holds_acks", False)))
        if self.watchdog is not None and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog
            notify("WATCHDOG=1")  # from the loop itself: a stuck loop stops sending it
        if now >= self.next_renew:
            self.next_renew = now + self.config.heartbeat.interval
            self.source.renew([(d.group, d.name) for w in pool.workers for d in w.held.values()])
        if pool.status_due or now >= self.next_status:
            pool.status_due = False
            self.next_status = now + self.config.heartbeat.interval
            self.lifecycle.reap_ended(now)
            self.read_processes()
            try:
                self.write_status(now)
            except OSError as exc:
                log.error("cannot write status.json: %s", exc)
        if pool.running:
            self.scheduler.publish_due(time.time(), self.config.schedules)
        if now >= self.next_housekeeping and pool.running:
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self.source.housekeeping({w.pid for w in pool.workers if w.pid})
            self.accounting.forget_old_heartbeats()

    def announce_started(self) -> None:
        self.pool.announced = True
        log.info("Enhanced IPC system started root=%s groups=%s workers=%d",
                 self.local.root, ",".join(sorted(self.source.stats()["groups"])), len(self.pool.workers))
        log.info("platform interfaces: %s", portable.interfaces())
        notify("READY=1", f"STATUS={len(self.pool.workers)} workers ready")
        if self._on_started is not None:
            self._on_started()

    def read_processes(self) -> None:
        for worker in self.pool.workers:
            if worker.probe is None and worker.pid:
                worker.probe = ProcessProbe(worker.pid)
            if worker.probe is not None:
                worker.reading = worker.probe.read()

    # -- status --------------------------------------------------------------------

    def snapshot(self, now: float, transport: dict[str, Any] | None = None) -> PoolSnapshot:
        """The pool at this moment, for status.json, /metrics and /readyz (``transport``: the transport's stats
        as last read, when a fresh read would cost a round trip)."""
        pool, workers = self.pool, []
        for w in pool.workers:
            current, started = w.current()
            reading, probe = w.reading, w.probe
            workers.append(WorkerView(
                pid=w.pid, slot=w.slot, state=w.state.value, last_heartbeat=w.last_heartbeat,
                rss_mb=reading.rss_mb if reading else None, cpu_percent=reading.cpu_percent if reading else None,
                create_time=probe.create_time() if probe is not None else None, handled=w.handled,
                failed=w.failed, restarts=pool.slots[w.slot].restarts, told=w.current_message,
                load={group: GroupLoad(*counts) for group, counts in w.load_by_group().items()},
                current=Running(current.seq, current.group, current.name, started) if current else None))
        reloader, accounting = self.reloader, self.accounting
        return PoolSnapshot(
            state=pool.state.value, pid=os.getpid(), create_time=create_time_of(os.getpid()),
            started_wall=self.started_wall, wall=time.time(), now=now, interval=self.config.heartbeat.interval,
            root=str(self.local.root), backend=self.source.backend,
            http=self.http.address if self.http is not None else None, expected_workers=pool.size,
            booted=pool.announced, spool_root=self.config.spool.root if self.source.backend == "spool" else None,
            workers=tuple(workers), finished=pool.metrics.by_group(), totals=dict(accounting.totals),
            reloads=reloader.log.as_status(pool.generation, reloader.reloading is not None),
            external=tuple(ExternalHeartbeat(group, pid, record["status"], record["at"])
                           for (group, pid), record in sorted(accounting.external.items())),
            transport=self.source.stats() if transport is None else transport,
            schedules=self.scheduler.view(time.time()))

    def answer_probe(self, lag: float) -> Answer:
        """An HTTP probe's question (/metrics, /healthz, /readyz), answered from the loop thread."""
        # The queues as read at the last status write (every [heartbeat] interval): a probe never
        # waits on a Redis round trip, so a slow or partitioned Redis cannot fail /healthz by itself.
        snapshot = self.snapshot(self.clock(), self._source_stats)
        status = status_record(snapshot)
        return Answer(Scrape(self.pool.metrics.snapshot(), status, lag, judge(status, own=snapshot)))

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
        if not self.pool.state.final:
            self.source.announce(status)  # a transport shared by hosts shows every supervisor
        if self.pool.announced and self.pool.running and self.reloader.reloading is None:
            notify(status_line(status, judge(status, own=snapshot)))
