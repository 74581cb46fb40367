"""The worker process: take deliveries from the supervisor, run each through the pipeline, report back.

A worker is started by the supervisor with its own pair of pipes. It imports
the handlers once (a failure is reported as ``BootError`` and ends the process
with EXIT_WORKER_BOOT), then loops, speaking the records of
:mod:`ipcpool.pool.protocol`: ``Run`` in, ``Done`` out (every ``prefetch // 2``
deliveries, or once it has had nothing to do for IDLE_REPORT_DELAY_MS: under
load, one wake-up of the supervisor per batch rather than per message), and
``Heartbeat`` from its heartbeat thread. What happens to one message is
:class:`~ipcpool.pool.pipeline.DeliveryPipeline`'s business.

Stopping: a ``Stop`` from the supervisor, or SIGTERM sent to the worker
itself (``kill``, or a signal to the whole process group as systemd and
``timeout`` send), finishes the running delivery and returns the rest. After
SIGTERM the worker gives that delivery ``[pool] shutdown_grace``, timed by its
heartbeat thread (woken by the signal), then exits with EXIT_WORKER_GRACE
and the supervisor puts it back. At ``max_tasks`` it retires (``Retiring``).

Its own limit: the supervisor times handlers out (``[pool] handler_timeout``,
SIGKILL after ``kill_grace``), but a supervisor that is stopped (SIGSTOP) or
frozen is not gone, so nothing would. A third thread ends the worker itself,
with EXIT_WORKER_OVERTIME, once the running attempt has outlived
:func:`~ipcpool.config.handler_limit` (the supervisor's own kill plus WORKER_LIMIT_MARGIN): a
live supervisor's kill comes first, and the bound on how long any handler runs
holds whatever the supervisor does (on Redis, what keeps a sequence's order
across supervisors: docs/redis.md). Nor does it start a message that waits in
its queue while the supervisor's loop has not run for a ``[heartbeat]
interval`` (its stamp in the shared array): nothing starts long after the last
lease renewal.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ipcpool import portable
from ipcpool.config import WORKER_LIMIT_MARGIN, Config, handler_limit
from ipcpool.errors import EXIT_OK, EXIT_WORKER_BOOT, EXIT_WORKER_GRACE, EXIT_WORKER_OVERTIME, HandlerNotFound
from ipcpool.handlers import Handler, HandlerTable, resolve_all
from ipcpool.localroot import LocalRoot
from ipcpool.ops import proctitle
from ipcpool.ops.health import heartbeat_envelope, pid_alive, process_create_time
from ipcpool.ops.tally import Labels, Tally
from ipcpool.pool.pipeline import DeliveryPipeline
from ipcpool.pool.protocol import (
    SLOT_DRAIN_BY,
    SLOT_LOOP_AT,
    SLOT_STARTED,
    BootError,
    Done,
    Heartbeat,
    Outcome,
    Ready,
    Report,
    Result,
    Retiring,
    Run,
    Stop,
    Stopping,
)
from ipcpool.transport import make_store
from ipcpool.transport.base import Receipt

log = logging.getLogger(__name__)

IDLE_REPORT_DELAY_MS = 20  # how long finished results wait for more work before being reported
REPLY_RETRY_MS = 500  # how often a response that could not be written is tried again

# The outcomes a worker counts for /metrics, under their metric names (an outside
# heartbeat was handled; unsettled, returned, unreachable and vanished are not finished).
_TALLIED = {Outcome.HANDLED: "handled", Outcome.DUPLICATE: "duplicate", Outcome.HEARTBEAT: "handled",
            Outcome.FAILED: "failed", Outcome.INVALID: "invalid", Outcome.EXPIRED: "expired"}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, passed once at start."""

    config: Config
    slot: int
    supervisor_pid: int
    tasks: Connection
    results: Connection
    shared: Any  # multiprocessing RawArray('d', SHARED_SLOTS): see ipcpool.pool.protocol
    handlers: dict[str, Handler] | None = None  # compat API only: callables inherited by fork
    inherited_fds: tuple[int, ...] = ()  # compat API only: the supervisor's descriptors to close after fork
    max_tasks: int = 0  # retire after this many deliveries (0: never), as gunicorn's max_requests


class Worker:
    def __init__(self, spec: WorkerSpec, handlers: HandlerTable) -> None:
        self.spec = spec
        self.config = spec.config
        self.store = make_store(spec.config)
        self.pipeline = DeliveryPipeline(spec.config, self.store, handlers, spec.shared)
        self.tasks = spec.tasks
        self.results = spec.results
        self._send_lock = threading.Lock()
        self._queue: deque[Receipt] = deque()
        self._done: list[Result] = []
        self._unsettled: dict[tuple[str, str], int] = {}  # (group, ref) -> its index in _done, until settled
        self._stopping = False
        self._term_at: float | None = None  # when SIGTERM asked this worker itself to stop
        self._retiring = False  # stopping because max_tasks was reached
        self._orphaned = False  # the supervisor is gone: end once the running delivery is done
        self._held_back = False  # queued deliveries wait: the supervisor's loop has not run for an interval
        self._delivery_ended = threading.Event()  # what the heartbeat thread of an orphan waits for
        self.title = proctitle.Title()
        self._max_tasks = spec.max_tasks
        self._pid = os.getpid()
        # Counts for /metrics, sent with the results (workers serve no metrics themselves).
        self.tally = Tally(Labels(spec.config))
        # Report results once half the prefetch is done, so the supervisor refills
        # this worker's queue before it runs dry: claims overlap with handling.
        self._report_every = max(1, spec.config.pool.prefetch // 2)
        self._urgent: set[int] = set()  # deliveries whose results go back at once (Run.urgent)
        self._poller = select.poll()  # one object for every non-blocking check of the task pipe
        self._poller.register(self.tasks.fileno(), select.POLLIN)

    # -- channel ----------------------------------------------------------------------

    def send(self, report: Report) -> None:
        with self._send_lock:
            self.results.send(report)

    def flush(self) -> None:
        if self._unsettled:
            self._settle_completions()
        if self._done:
            batch, self._done = self._done, []
            self.send(Done(batch, self.tally.take()))

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        pipeline = self.pipeline
        while True:
            if self._stopping:
                self._return_unstarted()
                self.flush()
                if self._retiring:
                    self.send(Retiring(pipeline.handled + pipeline.failed))
                if pipeline.pending_replies:
                    pipeline.retry_replies(final=True)
                return EXIT_OK
            if pipeline.pending_replies:
                pipeline.retry_replies()
            if not self._queue:
                # Out of work: report what is done, but not at once; under load the next
                # task arrives first, and the supervisor is woken once per batch, not per message.
                if not self._done or not self._poller.poll(IDLE_REPORT_DELAY_MS):
                    self.flush()
                    if self._stopping:
                        continue
                if pipeline.pending_replies and not self._done and not self._poller.poll(REPLY_RETRY_MS):
                    continue
                self._receive(block=not self._done)
                continue
            if self._poller.poll(0):
                self._receive(block=False)
                if self._stopping:
                    continue
            if self._supervisor_stalled():
                self._wait_for_supervisor()
                continue
            seq, group, name, deliveries = self._queue.popleft()
            outcome, info = pipeline.process(seq, group, name, deliveries)
            if self._orphaned:  # completed (acked, removed): nobody is left to report it to
                self._delivery_ended.set()
                self.exit_now(EXIT_OK)
            if outcome is Outcome.HANDLED:
                self._unsettled[(group, name)] = len(self._done)
            self._done.append((seq, outcome, info))
            if outcome in _TALLIED:
                self.tally.record(group, pipeline.last_type, _TALLIED[outcome], pipeline.last_seconds)
            if self._max_tasks and pipeline.handled + pipeline.failed >= self._max_tasks and not self._stopping:
                self._stopping = self._retiring = True
            if len(self._done) >= self._report_every or seq in self._urgent:
                self._urgent.discard(seq)  # a sequence's next message waits for this report: no batching
                self.flush()

    def _supervisor_stalled(self) -> bool:
        """Whether the supervisor's loop has not run for a heartbeat interval (0.0: not told yet)."""
        stamp = self.spec.shared[SLOT_LOOP_AT]
        stalled = stamp > 0 and time.monotonic() - stamp > self.config.heartbeat.interval
        if not stalled and self._held_back:
            self._held_back = False
            log.info("worker %d: the supervisor runs again; starting what waits here", self._pid)
        return stalled

    def _wait_for_supervisor(self) -> None:
        """Start nothing while the supervisor is stopped or frozen: on Redis its leases are not renewed, and a
        message started now could outlive them. Results still go back; a Stop, or the pipe's end, is heard."""
        if not self._held_back:
            self._held_back = True
            log.warning("worker %d: supervisor %d has not run for over %gs (stopped or frozen?); %d messages "
                        "wait here until it does", self._pid, self.spec.supervisor_pid,
                        self.config.heartbeat.interval, len(self._queue))
        self.flush()
        if self._poller.poll(max(1, int(self.config.heartbeat.interval * 250))):  # a quarter interval, in ms
            self._receive(block=False)

    def _return_unstarted(self) -> None:
        """On stop, deliveries not yet started go back to the supervisor, not to a handler."""
        while self._queue:
            seq = self._queue.popleft()[0]
            self._done.append((seq, Outcome.RETURNED, None))

    def on_sigterm(self, _signum: int, _frame: Any) -> None:
        """Graceful stop: finish the current delivery (within shutdown_grace), return the rest. Idle: exit now.

        Only records, as signal handlers should; the heartbeat thread, woken
        by the same signal, tells the supervisor and keeps the time.
        """
        if self.pipeline.current is None and not self._queue and not self._done and not self.pipeline.pending_replies:
            self.exit_now(EXIT_OK)
        if self._term_at is None:
            self._term_at = time.monotonic()
        self._stopping = True

    def exit_now(self, code: int) -> None:
        """Leave at once, with what was printed flushed (a handler's output is not lost)."""
        self.store.close()
        _flush_stdio()
        os._exit(code)

    def _receive(self, *, block: bool) -> None:
        while block or self._poller.poll(0):
            block = False
            try:
                command = self.tasks.recv()
            except (EOFError, OSError):
                log.warning("worker %d: supervisor is gone; exiting", self._pid)
                self.exit_now(EXIT_OK)
            if isinstance(command, Run):
                self._queue.extend(command.receipts)
                self._urgent.update(command.urgent)
                self.store.prefetch(command.receipts)  # one round trip for the batch, where the transport can
            elif isinstance(command, Stop):
                self._stopping = True

    def _settle_completions(self) -> None:
        """Before reporting: completions the transport pipelined are finished; a failed one is reported as such."""
        for key, info in self.store.settle().items():
            index = self._unsettled.get(key)
            if index is not None:
                seq, outcome, _ = self._done[index]
                self._done[index] = (seq, outcome, info)
                self.pipeline.ack_failed(key[0], info)
        self._unsettled.clear()

    # -- its own limit --------------------------------------------------------------------------

    def limit_loop(self) -> None:
        """End this worker when the running attempt outlives :func:`handler_limit` (in a drain: the drain's
        deadline too), whatever the supervisor does. Its own thread: the heartbeat thread may wait on a full
        pipe to a frozen supervisor."""
        shared = self.spec.shared
        limit = handler_limit(self.config.pool)
        idle = self.config.heartbeat.interval
        while True:
            started = shared[SLOT_STARTED]
            if started <= 0:
                time.sleep(idle)
                continue
            deadline = started + limit
            drain_by = shared[SLOT_DRAIN_BY]
            if drain_by > 0:  # a live supervisor lets a running handler finish within shutdown_grace
                deadline = max(deadline, drain_by + self.config.pool.kill_grace + WORKER_LIMIT_MARGIN)
            wait = deadline - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif shared[SLOT_STARTED] == started:  # the same attempt is still running
                self._overtime(time.monotonic() - started, limit)

    def _overtime(self, ran: float, limit: float) -> None:
        """Say which message, then exit EXIT_WORKER_OVERTIME: the supervisor blames it as a timeout."""
        pool = self.config.pool
        current = self.pipeline.current_message or {}
        where = self.pipeline.current
        said = threading.Thread(target=_say_overtime, daemon=True, args=(
            self._pid, ran, limit, pool.handler_timeout, pool.kill_grace, current.get("id", "-"),
            current.get("type", "-"), current.get("group") or (where[0] if where else "-")))
        said.start()
        said.join(1.0)  # a log line stuck on a full stderr never keeps the worker alive
        os._exit(EXIT_WORKER_OVERTIME)

    # -- heartbeats ----------------------------------------------------------------------------

    def _outlive_supervisor(self, supervisor: int) -> None:
        """The supervisor is gone (SIGKILLed): the handler running now finishes and its message is completed,
        so the next supervisor does not run it again; then the worker exits, within ``handler_timeout``.

        What it held and had not started stays claimed: the next supervisor waits for this worker (it holds
        workers.lock) before it takes those back.
        """
        log.warning("worker %d: supervisor %d is gone; finishing the running message, if any (within "
                    "handler_timeout %gs), then exiting", self._pid, supervisor, self.config.pool.handler_timeout)
        self._orphaned = True  # the main loop exits after the delivery it runs, or at its pipe's end if idle
        self._delivery_ended.wait(self.config.pool.handler_timeout)
        self.exit_now(EXIT_OK)

    def heartbeat(self) -> dict[str, Any]:
        pipeline = self.pipeline
        current = pipeline.current
        return heartbeat_envelope(
            pid=self._pid,
            busy=current is not None,
            current=pipeline.current_message if current else None,
            current_age=time.time() - current[2] if current else None,
            handled=pipeline.handled,
            failed=pipeline.failed,
        )

    def heartbeat_loop(self, interval: float, wake_fd: int) -> None:
        """Heartbeats every ``interval``; after SIGTERM (which wakes it), the shutdown grace too."""
        supervisor = self.spec.supervisor_pid
        try:
            born = process_create_time(supervisor)
        except Exception:  # noqa: BLE001 - already gone
            self.exit_now(EXIT_OK)
        # Its pidfd, where there is one, says when that very process ends: a start time read again later moves
        # with the wall clock (psutil adds the boot time, which a clock step shifts), so a step would make a
        # live supervisor look gone.
        watch = portable.pidfd_open(supervisor)
        grace = self.config.pool.shutdown_grace
        next_beat = time.monotonic() + interval
        told = False
        title = self.title
        while True:
            now = time.monotonic()
            deadline = None if self._term_at is None else self._term_at + grace
            wait = min(next_beat, deadline if deadline is not None else next_beat) - now
            if wait > 0 and select.select([wake_fd], [], [], wait)[0]:
                _drain(wake_fd)
            now = time.monotonic()
            try:
                if self._term_at is not None and not told:
                    told = True
                    log.info("worker %d: SIGTERM: finishing the current message (grace %gs), returning the rest",
                             self._pid, grace)
                    self.send(Stopping("SIGTERM"))
                if self._term_at is not None and now >= self._term_at + grace:
                    log.warning("worker %d: shutdown_grace (%gs) ran out mid-handler; exiting, the supervisor "
                                "puts the message back", self._pid, grace)
                    self.exit_now(EXIT_WORKER_GRACE)
                if now >= next_beat:
                    next_beat = now + interval
                    if not _alive(supervisor, born, watch):
                        self._outlive_supervisor(supervisor)
                    self.send(Heartbeat(self.heartbeat()))
                    title.set(proctitle.worker(self.spec.slot, self.pipeline.current_message,
                                               "stopping" if self._stopping else "idle"))
            except (BrokenPipeError, EOFError, OSError):
                self.exit_now(EXIT_OK)


def _alive(pid: int, born: float, pidfd: int | None) -> bool:
    """Whether the process ``pid`` that started at ``born`` runs: its pidfd not yet readable, or, without one,
    its pid and start time (macOS keeps a process's start time as it was, whatever the clock does since)."""
    if pidfd is not None:
        return not select.select([pidfd], [], [], 0)[0]
    return pid_alive(pid, born)


def _say_overtime(pid: int, ran: float, limit: float, timeout: float, kill_grace: float, message_id: str,
                  message_type: str, group: str) -> None:
    log.error("worker %d: handler ran %.1fs, past its limit %gs (handler_timeout %gs + kill_grace %gs + %gs) and "
              "the supervisor did not stop it (stopped or frozen?); the worker exits with code %d, the message "
              "counts as timed out id=%s type=%s group=%s", pid, ran, limit, timeout, kill_grace,
              WORKER_LIMIT_MARGIN, EXIT_WORKER_OVERTIME, message_id, message_type, group)
    _flush_stdio()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _take_worker_lock(root: LocalRoot) -> None:
    """Hold a shared lock for life: a new supervisor waits on it for old workers to be gone.

    A handler that forks must not pass the lock on to a child that outlives us.
    """
    fd = os.open(root.workers_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.register_at_fork(after_in_child=lambda: _close_quietly(fd))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# Signals a worker leaves to its supervisor: Ctrl-C and a closed terminal reach the
# supervisor too, which drains the pool; the others mean nothing to a worker.
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point. Never returns: exits with a code the supervisor understands."""
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the handlers are loaded
    # A signal also writes to this pipe (a forked compat worker must not write to the
    # supervisor's): it wakes the heartbeat thread, which times the shutdown grace.
    wake_r, wake_w = portable.pipe()
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for fd in spec.inherited_fds:  # nor hold the supervisor's root lock after it dies
        _close_quietly(fd)
    from ipcpool.ops.logs import capture_handler_output, setup_logging

    setup_logging(spec.config.log.format)
    running: list[Worker] = []  # what a handler prints is logged with the message it runs (once there is one)
    if spec.handlers is None:  # not the compat API's workers: their handlers print to the user's own program
        capture_handler_output(lambda: running[0].pipeline.current_message if running else None)
    proctitle.Title().set(proctitle.worker(spec.slot, None, "starting"))
    os.umask(0o077 if spec.config.spool.mode == "private" else 0o007)
    try:
        table = spec.handlers if spec.handlers is not None else resolve_all(spec.config.handlers)
        handlers = HandlerTable(table)
    except HandlerNotFound as exc:
        detail = "".join(traceback.format_exception(exc.__cause__ or exc))
        log.error("worker %d cannot boot: %s", os.getpid(), exc)
        try:
            spec.results.send(BootError(f"{exc}\n{detail}"))
        except OSError:
            pass
        os._exit(EXIT_WORKER_BOOT)
    worker = Worker(spec, handlers)
    running.append(worker)
    worker.title.set(proctitle.worker(spec.slot, None))
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    _take_worker_lock(LocalRoot(spec.config.spool.root))
    try:
        spec.results.send(Ready(os.getpid()))
        threading.Thread(
            target=worker.heartbeat_loop, args=(spec.config.heartbeat.interval, wake_r), name="heartbeat",
            daemon=True,
        ).start()
        threading.Thread(target=worker.limit_loop, name="handler-limit", daemon=True).start()
        code = worker.run()
    except (BrokenPipeError, EOFError, ConnectionError):
        log.warning("worker %d: supervisor is gone; exiting", os.getpid())
        worker.exit_now(EXIT_OK)
    handlers.close()
    worker.exit_now(code)


