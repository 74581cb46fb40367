"""Worker processes as the supervisor sees them: spawn, signal, read, describe exits.

Each worker gets its own pair of one-way pipes (tasks in, results out), rebuilt
when it is replaced: a shared queue would wedge the whole pool if one process
died holding its lock. Workers are started through a forkserver, so they are
forked from a small single-threaded process that never saw the supervisor's
watcher thread or lock, and never imported handler code.
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
from multiprocessing.connection import Connection
from typing import Any

from ipcpool.config import Config
from ipcpool.health import ProcessProbe, ProcessReading
from ipcpool.worker import SHARED_SLOTS, SLOT_SEQ, SLOT_STARTED, WorkerSpec, worker_main

log = logging.getLogger(__name__)


def mp_context(*, fork: bool = False) -> Any:
    """The forkserver context, preloading only ipcpool's worker module (never handlers).

    ``fork=True`` is for the compat API, whose handlers are callables that only
    a forked child can inherit.
    """
    if fork:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ipcpool.worker"])
    return ctx


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
    tasks: Connection
    results: Connection
    shared: Any
    started_at: float
    state: WorkerState = WorkerState.STARTING
    held: OrderedDict[int, Delivery] = field(default_factory=OrderedDict)
    pid: int = 0
    last_heartbeat: float = 0.0
    heartbeat: dict[str, Any] = field(default_factory=dict)
    handled: int = 0
    failed: int = 0
    stop_reason: StopReason | None = None
    kill_at: float | None = None
    stop_by: float | None = None  # a recycled worker not gone by then is killed
    boot_error: str | None = None
    probe: ProcessProbe | None = None
    reading: ProcessReading | None = None
    tasks_open: bool = True  # our end of its task pipe still takes writes
    results_open: bool = True  # its result pipe not at EOF (read it to the end even after tasks_open fails)
    _results_poller: Any = field(default=None, init=False, repr=False)

    def results_waiting(self) -> bool:
        """Whether its result pipe can be read now (or is at its end).

        One poll object for the worker's life: ``Connection.poll`` builds a
        selector on every call, and the supervisor asks after every report.
        """
        if self._results_poller is None:
            self._results_poller = select.poll()
            self._results_poller.register(self.results.fileno(), select.POLLIN)
        return bool(self._results_poller.poll(0))

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    @property
    def capacity_used(self) -> int:
        return len(self.held)

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
        running = self.shared[SLOT_STARTED] > 0
        return sum(1 for s in self.held if s > seq or (s == seq and running))

    def send(self, command: tuple[Any, ...]) -> bool:
        if not self.tasks_open:
            return False
        try:
            self.tasks.send(command)
        except (BrokenPipeError, OSError):
            self.tasks_open = False
            return False
        return True

    def signal(self, signum: int) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for conn in (self.tasks, self.results):
            try:
                conn.close()
            except OSError:
                pass


def spawn_worker(ctx: Any, config: Config, slot: int, supervisor_pid: int, now: float,
                 handlers: dict[str, Any] | None = None, inherited_fds: tuple[int, ...] = (),
                 max_tasks: int = 0) -> WorkerHandle:
    """Start one worker process with fresh channels."""
    tasks_r, tasks_w = ctx.Pipe(duplex=False)
    results_r, results_w = ctx.Pipe(duplex=False)
    shared = ctx.RawArray("d", SHARED_SLOTS)
    spec = WorkerSpec(config=config, index=slot, supervisor_pid=supervisor_pid,
                      tasks=tasks_r, results=results_w, shared=shared, handlers=handlers,
                      inherited_fds=inherited_fds, max_tasks=max_tasks)
    process = ctx.Process(target=worker_main, args=(spec,), name=f"ipcpool-worker-{slot}", daemon=False)
    process.start()
    tasks_r.close()
    results_w.close()
    handle = WorkerHandle(slot=slot, process=process, tasks=tasks_w, results=results_r, shared=shared,
                          started_at=now, pid=process.pid, last_heartbeat=now)
    log.debug("spawned worker pid=%d slot=%d", process.pid, slot)
    return handle


FORKSERVER_LOST_STATUS = 255


def describe_exit(code: int | None) -> str:
    """A worker's exit status in words, as gunicorn's reap_workers says them."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name} (perhaps out of memory?)"
        if -code == signal.SIGSEGV:
            return f"crashed with {name} (segmentation fault)"
        return f"killed by {name}"
    if code == FORKSERVER_LOST_STATUS:
        # multiprocessing reports 255 when the forkserver that would pass the status on
        # is gone too (a SIGTERM to the whole process group stops both).
        return f"exited with code {code} (or its exit status was lost with the forkserver)"
    return f"exited with code {code}"


def wall_to_iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
