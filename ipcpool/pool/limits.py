"""Judging live workers by their limits: boot time, heartbeats, handler timeout, stop deadlines, memory.

Each worker is judged by the config it runs (two are live during a reload).
A worker past a limit is stopped (recycled: it finishes what it runs) or
killed (TERM, then KILL after ``[pool] kill_grace``); its death is then the
lifecycle's business (:mod:`ipcpool.pool.lifecycle`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from ipcpool.pool.handle import StopReason, WorkerHandle, WorkerState
from ipcpool.pool.state import PoolState

log = logging.getLogger(__name__)

BOOT_TIMEOUT_MIN = 10.0  # seconds a worker may take to import its handlers, at least


class Limits:
    def __init__(self, pool: PoolState, read_leftovers: Callable[[WorkerHandle], None]) -> None:
        self.pool = pool
        self._read_leftovers = read_leftovers
        self.drain_deadline = 0.0  # draining workers still running then are killed

    def kill_stale(self, now: float) -> None:
        for worker in self.pool.workers:
            if worker.kill_at is not None:
                if now >= worker.kill_at:
                    worker.signal(signal.SIGKILL)
                continue
            self._judge(worker, now)

    def _judge(self, worker: WorkerHandle, now: float) -> None:
        pool = worker.config.pool  # each judged by the config it runs (two live during a reload)
        hb = worker.config.heartbeat
        if worker.state is WorkerState.STARTING:
            if now - worker.started_at > max(pool.handler_timeout, BOOT_TIMEOUT_MIN):
                worker.kill(StopReason.BOOT_TIMEOUT, "did not boot in time", now)
            return
        if worker.stop_by is not None and now > worker.stop_by:
            worker.kill(worker.stop_reason or StopReason.RECYCLE, "did not exit in time", now)
            return
        if worker.stop_reason is StopReason.DRAIN:
            if now >= self.drain_deadline:
                worker.kill(StopReason.DRAIN, "shutdown grace ran out", now)
            return
        silence_limit = hb.miss_limit * hb.interval
        if now - worker.last_heartbeat > silence_limit:
            # Its heartbeats may wait unread in its pipe: the loop itself was held up (stopped and continued,
            # the wait after came back empty: an interrupted epoll past its deadline). Read them first.
            self._read_leftovers(worker)
        silent = now - worker.last_heartbeat
        if silent > silence_limit:
            worker.kill(StopReason.HUNG, f"no heartbeat for {silent:.1f}s", now)
            return
        current, started = worker.current()
        if current is not None and now - started > pool.handler_timeout:
            if worker.has_exited() or worker.process_gone():  # it ended itself while this loop was stopped
                # (the forkserver may not have reported it yet): reaped, not killed
                return
            said = self.pool.source.summarize(current.group, current.name)
            worker.kill(StopReason.TIMEOUT,
                        f"handler ran {now - started:.1f}s (handler_timeout {pool.handler_timeout:g}s) "
                        f"id={said.shown_id} type={said.shown_type} group={current.group} file={current.name}", now)

    def recycle(self, now: float) -> None:
        """Stop workers over the memory limit; one past its task limit retires itself (``Retiring``)."""
        pool = self.pool
        if not pool.running:
            return
        limit_mb = pool.config.pool.max_memory_mb
        for worker in pool.workers:
            if worker.state is not WorkerState.READY:
                continue
            if limit_mb and worker.reading is not None and worker.reading.rss_mb > limit_mb:
                log.warning("recycling worker pid=%d: RSS %.0f MB is over max_memory_mb %d",
                            worker.pid, worker.reading.rss_mb, limit_mb)
                worker.stop(StopReason.RECYCLE, now)
                worker.restart_reason = "recycle-memory"
