"""Workers come and go: spawned into free slots, heard from, reaped when their process has really ended.

A worker's death is judged by why it stopped: a planned stop (recycle, drain,
reload, resize) puts back what it held and refills its slot at once; a death
before it was ever ready is a boot failure (the pool halts after ``[pool]
max_boot_failures`` of them, with backoff in between; during a reload it
aborts the reload instead); any other death is a crash, which blames the
delivery it was running (see :mod:`ipcpool.pool.accounting`) and backs off only
when a slot keeps dying young without doing any work. A worker that ended itself
past its own handler limit (EXIT_WORKER_OVERTIME: this supervisor was stopped or
frozen meanwhile) is a timeout, as if this supervisor had killed it.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable
from typing import Any

from ipcpool.errors import EXIT_WORKER_BOOT, EXIT_WORKER_GRACE, EXIT_WORKER_OVERTIME
from ipcpool.localroot import LocalRoot
from ipcpool.ops.logs import MULTILINE
from ipcpool.pool.accounting import Accounting
from ipcpool.pool.handle import StopReason, WorkerHandle, WorkerState, describe_exit, spawn_worker, start_helpers
from ipcpool.pool.protocol import (
    SLOT_ACK_HOLDS,
    BootError,
    Done,
    Heartbeat,
    Ready,
    Report,
    Retiring,
    Stopping,
)
from ipcpool.pool.reload import Reloader
from ipcpool.pool.state import PoolState

log = logging.getLogger(__name__)

BOOT_BACKOFF = 0.1  # first respawn delay after a boot failure; doubles each time
CRASH_BACKOFF = 0.02  # respawn delay after repeated young crashes; doubles, capped
CRASH_BACKOFF_MAX = 0.5
SHORT_LIFE = 1.0  # a worker that dies younger than this counts towards a crash streak
SPAWN_RETRY = 1.0  # seconds before a worker that could not be started (EMFILE, EAGAIN) is tried again
PLANNED_STOPS = (StopReason.RECYCLE, StopReason.DRAIN, StopReason.TERMINATED, StopReason.RELOAD, StopReason.RESIZE)


class Lifecycle:
    def __init__(self, pool: PoolState, accounting: Accounting, reloader: Reloader, local: LocalRoot, ctx: Any,
                 *, handlers: dict[str, Any] | None, own_fds: Callable[[], tuple[int | None, ...]],
                 forget: Callable[[WorkerHandle], None]) -> None:
        self.pool = pool
        self.accounting = accounting
        self.reloader = reloader
        self.local = local
        self._ctx = ctx
        self._handlers = handlers  # the compat API's callables: its workers are forked
        self._own_fds = own_fds  # the supervisor's descriptors a forked worker must close
        self._forget = forget  # the loop's wait set lets go of a reaped worker's descriptors
        self.boot_failures = 0
        self.last_boot_error = ""
        self.holds_acks = False  # the transport's last word on it, told to every worker
        self._spawn_failing = False  # a worker could not be started (logged once until one starts again)

    # -- spawning ----------------------------------------------------------------------------------------

    def start_helpers(self) -> None:
        """multiprocessing's resource tracker and forkserver, started before the supervisor's signal handlers
        are (see :func:`~ipcpool.pool.handle.start_helpers`)."""
        start_helpers(self._ctx)

    def spawn(self, slot: int, now: float) -> None:
        pool = self.pool
        inherited: tuple[int, ...] = ()
        if self._handlers is not None:  # forked: close what is the supervisor's, siblings' channels too
            siblings = [fd for w in pool.workers for fd in (w.tasks.fd, w.results.fd, w.process.sentinel, w.pidfd)]
            inherited = tuple(fd for fd in (*self._own_fds(), *siblings) if fd is not None)
        max_tasks = pool.config.pool.max_tasks_per_worker
        if max_tasks:  # jittered, so workers started together do not all retire together
            max_tasks += random.randint(0, max_tasks // 10)  # up to 10%: none below 10 tasks
        worker = spawn_worker(self._ctx, pool.config, slot, os.getpid(), now, self._handlers, inherited, max_tasks)
        worker.generation = pool.generation
        if self.holds_acks:
            worker.shared[SLOT_ACK_HOLDS] = 1.0
        pool.workers.append(worker)
        self.record_workers()

    def record_workers(self) -> None:
        """Who the workers are (pid, start time), kept on disk: if this supervisor dies, its successor finds
        them without /proc (see ipcpool.pool.orphans)."""
        self.local.record_workers({w.pid: w.create_time for w in self.pool.workers if w.pid})

    def spawn_missing(self, now: float) -> None:
        pool = self.pool
        if not pool.running:
            return
        # After a boot failure, one worker at a time tries again: the pool halts after
        # max_boot_failures without a crowd of workers still booting behind the last one.
        probing = self.boot_failures > 0
        if probing and any(w.state is WorkerState.STARTING for w in pool.workers):
            return
        # A worker being stopped or killed keeps its slot until it has ended (no overlap), except
        # for the old generation of a reload and a slot SIGTTOU took away.
        occupied = {w.slot for w in pool.workers if w.generation == pool.generation}
        for slot in range(pool.size):
            if slot not in occupied and now >= pool.slots[slot].next_spawn:
                try:
                    self.spawn(slot, now)
                except OSError as exc:  # out of descriptors or processes: the loop goes on, and tries again
                    if not self._spawn_failing:
                        log.error("cannot start a worker for slot %d (%s); trying again every %gs", slot,
                                  exc.strerror or exc, SPAWN_RETRY)
                    self._spawn_failing = True
                    pool.slots[slot].next_spawn = now + SPAWN_RETRY
                    return
                if self._spawn_failing:
                    self._spawn_failing = False
                    log.info("workers start again (slot %d)", slot)
                if probing:
                    return

    def tell_ack_holds(self, holds: bool) -> None:
        """Handled messages wait for their acks (or no longer): every worker's dedupe check looks for them."""
        if holds != self.holds_acks:
            self.holds_acks = holds
            for worker in self.pool.workers:
                worker.shared[SLOT_ACK_HOLDS] = 1.0 if holds else 0.0

    # -- what workers say --------------------------------------------------------------------------------

    def on_report(self, worker: WorkerHandle, report: Report) -> None:
        pool = self.pool
        now = pool.clock()
        if isinstance(report, Done):
            for result in report.results:
                try:
                    self.accounting.finish(worker, result)
                except Exception:  # one message's fault never leaves the rest of the batch unfinished
                    log.exception("cannot finish delivery %d of worker pid=%d; if its file is left in processing/, "
                                  "the next rescans put it back", result[0], worker.pid)
            if report.counts is not None:
                pool.metrics.absorb(report.counts)
        elif isinstance(report, Heartbeat):
            worker.last_heartbeat = now
            worker.current_message = report.current_message
        elif isinstance(report, Stopping):  # SIGTERM reached the worker itself (kill, or the whole process group)
            if worker.stop_reason is None:
                log.info("worker pid=%d slot=%d received %s: it finishes its current message and returns "
                         "the rest", worker.pid, worker.slot, report.why)
                worker.stop_reason = StopReason.TERMINATED
                worker.state = WorkerState.STOPPING
                worker.stop_by = now + worker.config.pool.shutdown_grace + worker.config.pool.kill_grace
        elif isinstance(report, Retiring):  # reached its max_tasks: it returned the rest and exits by itself
            if worker.stop_reason is None:
                log.info("recycling worker pid=%d after %d tasks", worker.pid, report.tasks)
                worker.stop_reason = StopReason.RECYCLE
                worker.restart_reason = "recycle-tasks"
                worker.state = WorkerState.STOPPING
                worker.stop_by = now + worker.config.pool.shutdown_grace
        elif isinstance(report, Ready):
            worker.ever_ready = True
            worker.state = WorkerState.READY if worker.stop_reason is None else worker.state
            worker.last_heartbeat = now
            self.boot_failures = 0
            pool.status_due = True  # a probe right after start or a restart sees the new worker
            log.info("worker ready pid=%d slot=%d", worker.pid, worker.slot)
        elif isinstance(report, BootError):
            worker.boot_error = report.text

    def read_leftovers(self, worker: WorkerHandle) -> None:
        """Reports a worker sent just before it ended (or that wait unread in its pipe) still count."""
        for report in worker.results.read():
            self.on_report(worker, report)

    # -- reaping -----------------------------------------------------------------------------------------

    def reap_ended(self, now: float, ready: set[int] | None = None) -> None:
        """Handle every worker whose process has really ended (checked when its death fd fired, or always
        when ``ready`` is None)."""
        for worker in list(self.pool.workers):
            fd = worker.death_fd
            if ready is not None and fd is not None and fd not in ready:
                continue
            if worker.has_exited():
                self.reap(worker, now)

    def reap(self, worker: WorkerHandle, now: float) -> None:
        """A worker has ended: account for what it reported and held, then let it go, whatever fails."""
        pool = self.pool
        pool.workers.remove(worker)
        try:
            worker.process.join(timeout=0)
            self.read_leftovers(worker)
            was_starting = not worker.ever_ready
            worker.state = WorkerState.DEAD
            code = worker.exit_code
            how = describe_exit(code, killed_by_us=worker.kill_at is not None)
            reason = worker.stop_reason
            reloading = self.reloader.reloading
            # A worker we stopped for a timeout or a hang that ran out of its own grace before our
            # SIGKILL came (kill_grace > shutdown_grace) is blamed all the same, or it never turns poison.
            if reason in PLANNED_STOPS or (code == EXIT_WORKER_GRACE and reason is None):
                self._on_planned_stop(worker, code, how, now)
            elif was_starting and reloading is not None and worker.generation == reloading.generation:
                self._on_reload_boot_failure(worker, how)
            elif was_starting and _is_boot_failure(code, reason):
                self.on_boot_failure(worker, how, now)
            elif code == 0 and reason is None and worker.current()[0] is None:
                log.info("worker stopped by itself pid=%d slot=%d (%s: SIGTERM while idle?); replacing it",
                         worker.pid, worker.slot, how)
                self.accounting.release_held(worker, blame=False)
                pool.slots[worker.slot].next_spawn = now
            else:
                self.on_crash(worker, how, now)
        finally:
            self._forget(worker)  # before its fds close: a forked sibling may still hold copies
            worker.close()
            self.record_workers()
            pool.status_due = True

    def _on_planned_stop(self, worker: WorkerHandle, code: int | None, how: str, now: float) -> None:
        reason = worker.stop_reason
        why = reason.value if reason is not None else "stopping"
        if code == EXIT_WORKER_GRACE:
            why += ", shutdown grace ran out mid-handler"
        log.info("worker stopped pid=%d slot=%d (%s, %s)", worker.pid, worker.slot, why, how)
        if worker.restart_reason is not None:
            self.pool.metrics.restart(worker.restart_reason)
        self.accounting.release_held(worker, blame=False)
        self.pool.slots[worker.slot].next_spawn = now

    def _on_reload_boot_failure(self, worker: WorkerHandle, how: str) -> None:
        """Any death of a new worker before it is ready (a boot error, the OOM killer, an import that hangs
        past the boot timeout) ends the reload; the old pool stays."""
        self.accounting.release_held(worker, blame=False)
        detail = (worker.boot_error or how).strip()
        log.error("a worker of the reloaded config failed to boot pid=%d slot=%d (%s): %s",
                  worker.pid, worker.slot, how, detail, extra=MULTILINE)
        # Named as `ipcpool check` names it: the file, [handlers], the problem.
        where = f"{self.pool.config.path}: [handlers] " if worker.boot_error else ""
        self.reloader.abort(f"a new worker failed to boot: {where}{detail.splitlines()[0]}")

    def on_boot_failure(self, worker: WorkerHandle, how: str, now: float) -> None:
        pool = self.pool
        self.boot_failures += 1
        pool.metrics.restart("boot")
        self.accounting.release_held(worker, blame=False)
        detail = (worker.boot_error or how).strip()
        limit = pool.config.pool.max_boot_failures
        # The traceback once; the same failure again is named by its first line.
        shown = detail if detail != self.last_boot_error else f"{detail.splitlines()[0]} (the same error again)"
        self.last_boot_error = detail
        log.error("worker failed to boot pid=%d slot=%d (%s), failure %d of %d: %s",
                  worker.pid, worker.slot, how, self.boot_failures, limit, shown, extra=MULTILINE)
        if self.boot_failures >= limit:
            pool.halt(EXIT_WORKER_BOOT, f"workers cannot boot: {detail.splitlines()[0]}")
            return
        pool.slots[worker.slot].next_spawn = now + BOOT_BACKOFF * 2 ** (self.boot_failures - 1)

    def on_crash(self, worker: WorkerHandle, how: str, now: float) -> None:
        pool = self.pool
        reason = worker.stop_reason
        if worker.exit_code == EXIT_WORKER_OVERTIME:  # its own limit: as our timeout kill, which did not come
            reason = StopReason.TIMEOUT
            how = (f"ended itself after handler_timeout + kill_grace ({worker.config.pool.handler_timeout:g}s + "
                   f"{worker.config.pool.kill_grace:g}s): this supervisor did not stop it in time (stopped or "
                   f"frozen?); {how}")
        elif reason is StopReason.TIMEOUT:
            how = f"killed after handler_timeout ({worker.config.pool.handler_timeout:g}s); {how}"
        elif reason is StopReason.HUNG:
            how = f"killed after missing heartbeats; {how}"
        log.error("worker died pid=%d slot=%d: %s; restarting", worker.pid, worker.slot, how)
        pool.metrics.restart("timeout" if reason is StopReason.TIMEOUT else "hung" if reason is StopReason.HUNG
                             else "crash")
        slot = pool.slots[worker.slot]
        slot.restarts += 1
        self.accounting.release_held(worker, blame=True, how=how)
        # Back off only when a slot keeps dying young without doing any work, so a crash
        # loop never spins hot while workers killed mid-task come back at once.
        idle_death = now - worker.started_at < SHORT_LIFE and worker.handled + worker.failed == 0
        slot.crash_streak = slot.crash_streak + 1 if idle_death else 0
        streak = slot.crash_streak
        slot.next_spawn = now + (min(CRASH_BACKOFF_MAX, CRASH_BACKOFF * 2**streak) if streak > 1 else 0.0)


def _is_boot_failure(code: int | None, reason: StopReason | None) -> bool:
    """Died on its own before ready: a boot error exit, any error exit, or a fatal signal it raised."""
    if reason is StopReason.BOOT_TIMEOUT:
        return True
    if reason is not None or code is None:
        return False
    if code > 0:
        return True
    return -code in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)
