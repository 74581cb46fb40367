"""A worker process as the supervisor sees it: spawn it, signal it, know when it has ended, say how.

Each worker gets its own pair of one-way pipes (tasks in, results out), rebuilt
when it is replaced: a shared queue would wedge the whole pool if one process
died holding its lock. Workers are started through a forkserver, so they are
forked from a small single-threaded process that never saw the supervisor's
watcher thread or lock, and never imported handler code.

A worker's exit status comes through the forkserver. When the forkserver dies
(a SIGTERM to the whole process group reaches it too), every worker's status
pipe closes while the workers run on: a lost status is not a dead worker. So
each worker is also known by its identity, its pid and start time: through a
pidfd where there is one (Linux), which says when that very process has ended
and signals it without the risk of a reused pid; elsewhere by its start time,
checked before every signal (see ``ipcpool.portable``).
"""

from __future__ import annotations

import enum
import logging
import multiprocessing
import os
import select
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ipcpool import portable
from ipcpool.channel import ResultChannel, TaskChannel
from ipcpool.config import Config
from ipcpool.ops.health import ProcessProbe, ProcessReading, pid_alive, process_create_time
from ipcpool.pool.protocol import SHARED_SLOTS, SLOT_SEQ, SLOT_STARTED, Command, Stop
from ipcpool.pool.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)


def mp_context(*, fork: bool = False) -> Any:
    """The forkserver context, preloading only ipcpool's worker module (never handlers), and naming it.

    ``fork=True`` is for the compat API, whose handlers are callables that only
    a forked child can inherit.
    """
    if fork:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ipcpool.forkserver_preload"])
    return ctx


JOB_CONTROL_SIGNALS = (signal.SIGTTIN, signal.SIGTTOU)  # the supervisor's resize signals


def start_helpers(ctx: Any) -> None:
    """Start multiprocessing's helper processes now, with SIGTTIN and SIGTTOU ignored (an ignored signal stays
    ignored across exec): sent to a shell job's whole process group, those signals would otherwise stop the
    resource tracker and the forkserver, and the next spawn would wait on them for ever. Call before the
    supervisor installs its own handlers for them. Under ``fork`` neither is used (semaphores are unlinked at
    once), so none is started: a helper nobody needs is one more child to leave a zombie."""
    from multiprocessing import forkserver, resource_tracker

    before = [signal.signal(signum, signal.SIG_IGN) for signum in JOB_CONTROL_SIGNALS]
    method = ctx.get_start_method()
    try:
        if method != "fork":
            resource_tracker.ensure_running()
        if method == "forkserver":
            forkserver.ensure_running()
    finally:
        for signum, handler in zip(JOB_CONTROL_SIGNALS, before, strict=True):
            signal.signal(signum, handler)


class WorkerState(enum.Enum):
    STARTING = "starting"  # process started, handlers importing
    READY = "ready"  # takes deliveries
    STOPPING = "stopping"  # told to stop (recycle, drain) or being killed
    DEAD = "dead"  # reaped


class StopReason(enum.StrEnum):
    RECYCLE = "recycle"  # planned: max tasks or memory; not a crash
    DRAIN = "drain"  # shutdown
    HUNG = "hung"  # missed heartbeats
    TIMEOUT = "timeout"  # handler outlived [pool] handler_timeout
    BOOT_TIMEOUT = "boot-timeout"
    TERMINATED = "sigterm"  # SIGTERM reached the worker itself: it finishes its message, returns the rest
    RELOAD = "reload"  # planned: a reload's new workers took over (or its failed new workers go)
    RESIZE = "resize"  # planned: SIGTTOU took one worker away


@dataclass(slots=True)
class Delivery:
    """One claimed file in one worker's hands."""

    seq: int
    group: str
    name: str
    deliveries: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.name)


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    process: Any
    tasks: TaskChannel
    results: ResultChannel
    shared: Any
    started_at: float
    config: Config  # the config it runs: its limits judge it (two are live during a reload)
    state: WorkerState = WorkerState.STARTING
    held: OrderedDict[int, Delivery] = field(default_factory=OrderedDict)
    pid: int = 0
    create_time: float | None = None  # with the pid, who this process is (a reused pid has another)
    pidfd: int | None = None  # this very process, even after its pid is reused (Linux)
    status_lost: bool = False  # its exit status went with the forkserver; watched through the pidfd
    last_heartbeat: float = 0.0
    current_message: dict[str, Any] | None = None  # what its last heartbeat said it was running
    handled: int = 0
    failed: int = 0
    stop_reason: StopReason | None = None
    generation: int = 0  # the config it runs: a reload starts a new generation, the old one exits
    ever_ready: bool = False  # said "ready" once: a death before that is a boot failure
    restart_reason: str | None = None  # a planned stop /metrics counts as a restart: recycle-tasks, recycle-memory
    kill_at: float | None = None
    stop_by: float | None = None  # a recycled worker not gone by then is killed
    boot_error: str | None = None
    probe: ProcessProbe | None = None
    reading: ProcessReading | None = None

    @property
    def death_fd(self) -> int | None:
        """What becomes readable when the process ends: its status pipe, or its pidfd once that is lost."""
        return self.pidfd if self.status_lost else self.process.sentinel

    def has_exited(self) -> bool:
        """Whether the process has ended; a closed status pipe alone does not say so.

        When the forkserver is gone, multiprocessing reports exit status 255 for
        every worker it started, running or not. The pidfd tells the truth; from
        then on it is what the supervisor waits on.
        """
        if not self.status_lost:
            if self.process.is_alive():
                return False
            if self._process_gone():
                return True
            self.status_lost = True
            # Expected when the whole process group is signalled (systemd, timeout, Ctrl-C): the forkserver
            # that starts workers ends too. Nothing is wrong with the worker: it drains like the others.
            log.info("worker pid=%d slot=%d outlives the forkserver (a signal to the process group ends it); "
                     "the supervisor watches the worker itself until it ends", self.pid, self.slot)
            return False
        return self._process_gone()

    def process_gone(self) -> bool:
        """The process itself has ended (its pidfd says so, or its pid is no longer it), whether or not the
        forkserver has reported its status yet: is_alive() waits for that report."""
        return self._process_gone()

    def _process_gone(self) -> bool:
        if self.pidfd is None:
            return not pid_alive(self.pid, self.create_time)
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    @property
    def exit_code(self) -> int | None:
        """The exit status, or None when it was lost with the forkserver."""
        return None if self.status_lost else self.process.exitcode

    def current(self) -> tuple[Delivery | None, float]:
        """The delivery whose handler is running now, and since when (monotonic), if any."""
        started = self.shared[SLOT_STARTED]
        if started <= 0:
            return None, 0.0
        return self.held.get(int(self.shared[SLOT_SEQ])), started

    def outstanding(self) -> int:
        """Deliveries handed over and not finished yet, read live from the worker's shared slots.

        ``held`` also lists finished ones not yet reported (a worker reports in
        batches); a worker runs its deliveries in the order given, so those
        before the one it is on (or last ran) are done.
        """
        if not self.held:
            return 0
        seq = int(self.shared[SLOT_SEQ])
        if self.shared[SLOT_STARTED] > 0:
            seq -= 1  # the running one counts
        count = 0
        for s in reversed(self.held):  # seqs ascend in dispatch order: count from the newest, stop at seq
            if s <= seq:
                break
            count += 1
        return count

    def load_by_group(self) -> dict[str, tuple[int, int, int]]:
        """Per group, ``(in hand, held, running)``: the deliveries handed over with no result back yet, those
        of them not started yet (its prefetch), and the one whose handler runs now.

        By the rule of :meth:`outstanding`: the newest ``outstanding()`` deliveries are unfinished, the
        older ones in ``held`` are done and not reported yet.
        """
        current, _started = self.current()
        unfinished = self.outstanding()
        counts: dict[str, list[int]] = {}
        for newest, delivery in enumerate(reversed(self.held.values())):
            row = counts.setdefault(delivery.group, [0, 0, 0])
            row[0] += 1
            if newest < unfinished:
                row[2 if delivery is current else 1] += 1
        return {group: (n, held, running) for group, (n, held, running) in counts.items()}

    def send(self, command: Command) -> bool:
        """Queue a command without blocking; False when its channel is closed."""
        return self.tasks.send(command)

    def stop(self, reason: StopReason, now: float) -> None:
        """Ask it to finish its current delivery, return the rest and exit (a planned stop has a deadline)."""
        self.stop_reason = reason
        self.state = WorkerState.STOPPING
        if reason in (StopReason.RECYCLE, StopReason.RELOAD, StopReason.RESIZE):
            pool = self.config.pool
            self.stop_by = now + pool.handler_timeout + pool.shutdown_grace
        if not self.send(Stop()):
            self.signal(signal.SIGTERM)

    def kill(self, reason: StopReason, why: str, now: float) -> None:
        """TERM now, KILL after [pool] kill_grace."""
        log.warning("killing worker pid=%d slot=%d (%s): %s", self.pid, self.slot, reason.value, why)
        self.stop_reason = reason if self.stop_reason is not StopReason.DRAIN else StopReason.DRAIN
        self.state = WorkerState.STOPPING
        self.signal(signal.SIGTERM)
        self.kill_at = now + self.config.pool.kill_grace

    def signal(self, signum: int) -> None:
        """Signal this process, never a stranger that reused its pid: through its pidfd, or by pid once its
        start time is checked (where there are no pidfds)."""
        try:
            if self.pidfd is not None:
                portable.pidfd_signal(self.pidfd, signum)
            elif self.pid and pid_alive(self.pid, self.create_time):
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait_gone(self, timeout: float) -> bool:
        """Block up to ``timeout`` for the process to end (shutdown only)."""
        deadline = time.monotonic() + timeout
        while not self.has_exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            fd = self.death_fd
            if fd is None:
                time.sleep(min(remaining, 0.05))
            else:
                select.select([fd], [], [], remaining)
        self.process.join(timeout=0)
        return True

    def close(self) -> None:
        self.tasks.close()
        self.results.close()
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None


def spawn_worker(ctx: Any, config: Config, slot: int, supervisor_pid: int, now: float,
                 handlers: dict[str, Any] | None = None, inherited_fds: tuple[int, ...] = (),
                 max_tasks: int = 0) -> WorkerHandle:
    """Start one worker process with fresh channels."""
    made: list[Any] = []  # closed again if the start fails half way (no descriptor leaks on EMFILE)
    try:
        tasks_r, tasks_w = ctx.Pipe(duplex=False)
        made += [tasks_r, tasks_w]
        results_r, results_w = ctx.Pipe(duplex=False)
        made += [results_r, results_w]
        shared = ctx.RawArray("d", SHARED_SLOTS)
        spec = WorkerSpec(config=config, slot=slot, supervisor_pid=supervisor_pid,
                          tasks=tasks_r, results=results_w, shared=shared, handlers=handlers,
                          inherited_fds=inherited_fds, max_tasks=max_tasks)
        process = ctx.Process(target=worker_main, args=(spec,), name=f"ipcpool-worker-{slot}", daemon=False)
        process.start()
    except BaseException:
        for conn in made:
            conn.close()
        raise
    tasks_r.close()
    results_w.close()
    # Read at once: the process cannot have been reaped and its pid reused in between.
    handle = WorkerHandle(slot=slot, process=process, tasks=TaskChannel(tasks_w), results=ResultChannel(results_r),
                          shared=shared, started_at=now, config=config, pid=process.pid,
                          create_time=_create_time(process.pid), pidfd=portable.pidfd_open(process.pid),
                          last_heartbeat=now)
    log.debug("spawned worker pid=%d slot=%d", process.pid, slot)
    return handle


FORKSERVER_LOST_STATUS = 255


def describe_exit(code: int | None, *, killed_by_us: bool = False) -> str:
    """A worker's exit status in words, as gunicorn's reap_workers says them (None: lost).

    A SIGKILL nobody here sent may well be the kernel's out-of-memory killer.
    """
    if code is None:
        return "exit status unknown (lost with the forkserver)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL and not killed_by_us:
            return f"killed by {name} (perhaps out of memory?)"
        if -code == signal.SIGSEGV:
            return f"crashed with {name} (segmentation fault)"
        return f"killed by {name}"
    if code == FORKSERVER_LOST_STATUS:
        # multiprocessing reports 255 when the forkserver that would pass the status on
        # is gone too (a SIGTERM to the whole process group stops both).
        return f"exited with code {code} (or its exit status was lost with the forkserver)"
    return f"exited with code {code}"


def _create_time(pid: int) -> float | None:
    try:
        return process_create_time(pid)
    except Exception:  # noqa: BLE001 - it ended already: its death is seen through its sentinel
        return None
