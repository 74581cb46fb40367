"""What the supervisor's parts share: the config it runs, its workers and slots, its state.

The parts (dispatch, accounting, lifecycle, limits, reload) each take this
one record instead of reaching into one another: what one of them changes
that another reads is here, in the open.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ipcpool.config import Config
from ipcpool.errors import EXIT_OK
from ipcpool.ops.tally import PoolMetrics
from ipcpool.pool.handle import WorkerHandle, WorkerState
from ipcpool.transport.base import Source

log = logging.getLogger(__name__)


class SupervisorState(enum.StrEnum):
    """The supervisor's life, as status.json says it."""

    STARTING = "starting"  # recovering what the last run held, booting workers
    RUNNING = "running"
    DRAINING = "draining"  # SIGTERM: workers finish what they run and exit; nothing new is handed out
    STOPPED = "stopped"  # drained, or stopped now (held messages went back)
    HALTED = "halted"  # gave up: workers cannot boot
    FAILED = "failed"  # an error outside the loop ended it

    @property
    def final(self) -> bool:
        return self in (SupervisorState.STOPPED, SupervisorState.HALTED, SupervisorState.FAILED)


@dataclass
class Slot:
    """One place in the pool: a worker runs in it, or is about to (after a backoff)."""

    restarts: int = 0  # crashes of its workers, for status
    next_spawn: float = 0.0  # monotonic: not before then (boot and crash backoffs)
    crash_streak: int = 0  # young deaths without work in a row: the crash backoff grows with it


@dataclass(eq=False)
class PoolState:
    config: Config  # the config new workers get (a reload's, once it begins)
    source: Source
    metrics: PoolMetrics
    clock: Callable[[], float]
    size: int  # how many workers the pool keeps ([pool] workers, SIGTTIN/SIGTTOU)
    workers: list[WorkerHandle] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    generation: int = 0  # the config the workers run; a reload's new workers carry the next one
    state: SupervisorState = SupervisorState.STARTING
    announced: bool = False  # every worker was ready once ("Enhanced IPC system started")
    exit_code: int = EXIT_OK
    halt_reason: str = ""
    status_due: bool = False  # write status.json at the next step, not at the next interval (a probe waits)

    def __post_init__(self) -> None:
        self.resize(self.size)

    @property
    def running(self) -> bool:
        return self.state is SupervisorState.RUNNING

    def resize(self, size: int) -> None:
        """Keep ``size`` workers; a slot once made keeps its record (a later resize may use it again)."""
        self.size = size
        self.slots.extend(Slot() for _ in range(size - len(self.slots)))

    def halt(self, code: int, reason: str) -> None:
        log.error("supervisor halting: %s", reason)
        self.exit_code = code
        self.halt_reason = reason
        self.state = SupervisorState.HALTED

    def ready_workers(self) -> list[WorkerHandle]:
        """Workers that take deliveries now."""
        return [w for w in self.workers if w.state is WorkerState.READY and w.tasks.open]

    def all_ready(self) -> bool:
        return len(self.workers) == self.size and all(w.state is WorkerState.READY for w in self.workers)
