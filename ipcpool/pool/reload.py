"""Reload and resizing, as gunicorn's SIGHUP, SIGTTIN and SIGTTOU: what may change, and how it goes.

A reload re-reads the config file (with the command line's overrides kept)
and starts new workers on it, which import the handlers afresh; the old
workers finish what they hold and exit. Where messages live and how the
supervisor is reached are fixed for its life: a change to ``[spool]``,
``[transport]``, ``[redis]`` or ``[http]`` is refused, with the key named,
and the old pool keeps running.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import ConfigError
from ipcpool.message import now_iso
from ipcpool.ops.logs import setup_logging
from ipcpool.ops.sdnotify import notify
from ipcpool.ops.tally import Labels
from ipcpool.ordering import rules_of
from ipcpool.pool.handle import StopReason, WorkerState
from ipcpool.pool.state import PoolState

log = logging.getLogger(__name__)

# Where messages live, how the supervisor is reached, and the heartbeat every worker and
# `ipcpool health` are judged by (two generations on two intervals would misjudge the old one).
RESTART_ONLY = ("spool", "transport", "redis", "http", "heartbeat")


def restart_only_change(old: Config, new: Config) -> str | None:
    """The first key a reload cannot apply, said as "[section] key: old -> new"; None when it can."""
    for section in RESTART_ONLY:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(before):
            a, b = getattr(before, f.name), getattr(after, f.name)
            if a != b:
                shown = ("(changed)", "(changed)") if section == "redis" and f.name == "url" else (a, b)
                return f"[{section}] {f.name} changed ({shown[0]!r} -> {shown[1]!r}): restart to apply it"
    if rules_of(old) != rules_of(new):  # the transport keeps each sequence's line by the rules it started with
        return "[groups.<name>] ordering or ordering_field changed: restart to apply it"
    return None


@dataclass
class Reload:
    """One reload in progress: the config to go back to, and the generation its new workers carry."""

    generation: int
    previous: Config
    previous_generation: int
    pool_size: int  # before the reload (SIGTTIN/SIGTTOU included): what an aborted reload goes back to


@dataclass
class ReloadLog:
    """The reloads so far, as ``ipcpool reload`` reads them from status.json."""

    count: int = 0
    succeeded: int = 0
    last: dict[str, Any] | None = None

    def record(self, ok: bool, reason: str) -> None:
        self.count += 1
        self.succeeded += ok
        self.last = {"ok": ok, "reason": reason, "at": now_iso()}

    def as_status(self, generation: int, in_progress: bool) -> dict[str, Any]:
        return {"count": self.count, "succeeded": self.succeeded, "generation": generation,
                "inProgress": in_progress, "last": self.last}


class Reloader:
    """SIGHUP: new workers on the re-read config; the old ones exit once every new one is ready.

    One at a time: a SIGHUP during a reload, or before the pool first stood, is kept and acted on once the
    pool stands (the config is read then, so the latest edit counts). A new worker that dies before it is
    ready aborts the reload: the old pool, config and size stay.
    """

    def __init__(self, pool: PoolState, reread: Callable[[], Config] | None) -> None:
        self.pool = pool
        self._reread = reread  # the config file again, with the command line's overrides
        self._generations = itertools.count(1)
        self.reloading: Reload | None = None
        self.pending = False  # a SIGHUP to act on once the pool stands
        self.log = ReloadLog()

    def begin(self) -> None:
        pool = self.pool
        if self.reloading is not None or not pool.announced:
            if not self.pending:
                log.info("received SIGHUP %s: the reload starts once it is done",
                         "during a reload" if self.reloading is not None else "while the workers boot")
            self.pending = True
            return
        self.pending = False
        notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        if self._reread is None:
            self.finish(False, "no config file to re-read (started from the API)")
            return
        try:
            new = self._reread()
        except ConfigError as exc:
            self.finish(False, str(exc))
            return
        refused = restart_only_change(pool.config, new)
        if refused is not None:
            self.finish(False, f"{pool.config.path}: {refused}")
            return
        self.reloading = Reload(next(self._generations), pool.config, pool.generation, pool.size)
        pool.config, pool.generation = new, self.reloading.generation
        pool.metrics.labels = Labels(new)
        pool.resize(new.pool.workers)
        log.info("received SIGHUP: reloading %s; starting %d workers on it (generation %d)", new.path,
                 new.pool.workers, pool.generation)

    def check(self) -> None:
        """Every new worker ready: the old generation finishes what it holds and exits."""
        pool = self.pool
        if self.reloading is None:
            if self.pending and pool.announced and pool.running:
                self.begin()
            return
        new = [w for w in pool.workers if w.generation == pool.generation and w.stop_reason is None]
        if len(new) < pool.size or any(w.state is not WorkerState.READY for w in new):
            return
        now = pool.clock()
        for worker in pool.workers:
            if worker.generation != pool.generation and worker.stop_reason is None:
                worker.stop(StopReason.RELOAD, now)
        setup_logging(pool.config.log.format)
        self.finish(True, f"{pool.size} workers on the new config (generation {pool.generation})")

    def abort(self, reason: str) -> None:
        """A new worker died before it was ready: the new generation goes; the old pool, config and size stay."""
        pool, reloading = self.pool, self.reloading
        assert reloading is not None
        now = pool.clock()
        for worker in pool.workers:
            if worker.generation == reloading.generation and worker.stop_reason is None:
                worker.stop(StopReason.RELOAD, now)
        pool.config, pool.generation = reloading.previous, reloading.previous_generation
        pool.metrics.labels = Labels(pool.config)
        pool.resize(reloading.pool_size)
        self.finish(False, reason)

    def finish(self, ok: bool, reason: str) -> None:
        self.reloading = None
        self.log.record(ok, reason)
        self.pool.status_due = True  # `ipcpool reload` is waiting for the outcome in status.json
        if ok:
            log.info("reload done: %s", reason)
        else:
            log.error("reload failed, the running pool and its config stay: %s", reason)
        notify("READY=1", f"STATUS=reload {'done' if ok else 'failed'}: {reason.splitlines()[0]}")

    def resize(self, size: int) -> None:
        """SIGTTIN / SIGTTOU: one worker more or fewer (never none); a reload goes back to [pool] workers."""
        pool = self.pool
        if self.reloading is not None:
            log.warning("received SIGTTIN/SIGTTOU during a reload: ignored (send it again once the reload is done)")
            return
        if size < 1:
            log.warning("received SIGTTOU with one worker left: ignored (a pool keeps at least one)")
            return
        log.info("resizing the pool: %d -> %d workers", pool.size, size)
        pool.resize(size)
        now = pool.clock()
        for worker in pool.workers:
            if worker.slot >= size and worker.stop_reason is None:
                worker.stop(StopReason.RESIZE, now)
