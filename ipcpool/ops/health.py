"""Heartbeats, psutil readings, ``status.json`` and the one verdict: healthy, ready, the transport up.

The supervisor writes ``<root>/.ipcpool/status.json`` atomically every
heartbeat interval; ``ipcpool health`` and ``ipcpool status`` only read it
(plus one psutil look at the supervisor's pid), so a probe never disturbs
the pool.

Whether a pool is healthy, ready and its transport up is judged once, by
:func:`judge`: ``ipcpool health``, ``ipcpool status`` (and ``top``) on the
record they read; the supervisor on its own record for /readyz, /metrics
(``ipcpool_transport_up``) and systemd's ``STATUS=`` line.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from ipcpool.localroot import (  # status.json is the local root's record; read here, judged here
    STALE_AFTER_INTERVALS,
    status_is_live,
)
from ipcpool.message import now_iso

HEARTBEAT_LATE_INTERVALS = 2  # a worker heartbeat older than this many intervals: unhealthy
NO_STATUS = "no status.json: the supervisor has not started on this root"


def heartbeat_envelope(
    *, pid: int, busy: bool, current: dict[str, Any] | None, current_age: float | None, handled: int, failed: int
) -> dict[str, Any]:
    """A ``heartbeat`` message as the original system's agents send them, plus counters."""
    return {
        "id": str(uuid.uuid4()),
        "type": "heartbeat",
        "groupFolder": "",
        "timestamp": now_iso(),
        "payload": {
            "processId": pid,
            "status": "busy" if busy else "idle",
            "currentMessage": current,
            "currentAge": round(current_age, 3) if current_age is not None else None,
            "handled": handled,
            "failed": failed,
        },
    }


@dataclass(frozen=True, slots=True)
class ProcessReading:
    alive: bool
    zombie: bool = False
    rss_mb: float = 0.0
    cpu_percent: float = 0.0


class ProcessProbe:
    """psutil readings of one process; keeps the Process so cpu_percent has a baseline."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._process: psutil.Process | None = psutil.Process(pid)
            self._process.cpu_percent(None)
        except psutil.Error:
            self._process = None

    def read(self) -> ProcessReading:
        process = self._process
        if process is None:
            return ProcessReading(alive=False)
        try:
            with process.oneshot():
                status = process.status()
                rss = process.memory_info().rss
                cpu = process.cpu_percent(None)
        except psutil.Error:
            return ProcessReading(alive=False)
        return ProcessReading(
            alive=status != psutil.STATUS_DEAD,
            zombie=status == psutil.STATUS_ZOMBIE,
            rss_mb=rss / (1024 * 1024),
            cpu_percent=cpu,
        )

    def create_time(self) -> float | None:
        """The process's start time (with its pid, who it is), or None when it is gone or was never found."""
        process = self._process
        try:
            return process.create_time() if process is not None else None
        except psutil.Error:
            return None


def pid_alive(pid: int, create_time: float | None = None) -> bool:
    """Whether ``pid`` runs and (when given) is the same process that started at ``create_time``."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(process.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def process_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, a debugger): it cannot finish anything until continued."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


def process_create_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def create_time_of(pid: int) -> float | None:
    """:func:`process_create_time`, or None when the process cannot be read."""
    try:
        return process_create_time(pid)
    except psutil.Error:
        return None


def transport_stats(status: dict[str, Any] | None) -> dict[str, Any]:
    """The transport's stats in a record: under ``"transport"``, or under ``"spool"`` in a record written by
    an older ipcpool (whose ``"transport"`` was only the backend's name)."""
    if not status:
        return {}
    stats = status.get("transport")
    if not isinstance(stats, dict):
        stats = status.get("spool")
    return stats if isinstance(stats, dict) else {}


def transport_name(status: dict[str, Any]) -> str | None:
    """The record's transport: spool or redis."""
    transport = status.get("transport")
    return transport.get("backend") if isinstance(transport, dict) else transport


def supervisor_alive(status: dict[str, Any] | None) -> bool:
    """The record is live and its supervisor's process still runs here (the same one: its start time)."""
    if status is None or not status_is_live(status):
        return False
    supervisor = status.get("supervisor") or {}
    pid = supervisor.get("pid")
    return isinstance(pid, int) and pid_alive(pid, supervisor.get("createTime"))


# -- the verdict: healthy (ipcpool health) and ready (/readyz), judged in one place -----------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What every interface says of a pool: ``ipcpool health`` and ``status``, /readyz, /metrics, systemd."""

    healthy: bool
    reason: str  # one line: why healthy or not (ipcpool health prints it)
    ready: bool  # takes work now (/readyz)
    ready_reason: str
    transport_up: bool  # the spool folder or Redis is reachable (ipcpool_transport_up)


class OwnFacts(Protocol):
    """What the supervisor knows of itself beside its record (its PoolSnapshot has both)."""

    @property
    def booted(self) -> bool: ...  # every worker has been ready once

    @property
    def spool_root(self) -> str | None: ...  # the spool root it serves (None on Redis)


def judge(status: dict[str, Any] | None, *, now: float | None = None, own: OwnFacts | None = None,
          reach: Callable[[], str | None] | None = None) -> Verdict:
    """Health and readiness from one status record.

    Healthy: the supervisor runs (its pid, with its start time), its record is fresh, it is running,
    the transport is reachable and not stuck (full, stranded transitions, a group not served), every
    expected worker is ready and none missed its heartbeats. Ready: running, every worker booted
    once, one ready now, the transport reachable, the spool root there; a group not served, or a
    worker short, does not make a pool unready.

    ``own``: the supervisor judging its own record, so it runs, and only it knows whether every worker
    booted and whether its spool root is there. Judged from the file alone (``own`` None), its pid
    is looked up, and readiness leaves those two out. ``reach``: a look at the transport from here
    (the command line pings Redis), taken only when all else is healthy: why it failed, or None.
    """
    transport = transport_stats(status)
    down = (transport.get("error") or "Redis is unreachable") if transport.get("redisDown") else None
    healthy, reason = _health(status, transport, down, time.time() if now is None else now, own)
    if healthy and reach is not None:
        down = reach()
        if down is not None:
            healthy, reason = False, down
    ready, ready_reason = _readiness(status, down, own)
    return Verdict(healthy, reason, ready, ready_reason, transport_up=down is None)


def _health(status: dict[str, Any] | None, transport: dict[str, Any], down: str | None, now: float,
            own: OwnFacts | None) -> tuple[bool, str]:
    if status is None:
        return False, NO_STATUS
    supervisor = status.get("supervisor", {})
    interval = float(status.get("interval", 1.0))
    pid = supervisor.get("pid")
    if own is None and not (isinstance(pid, int) and pid_alive(pid, supervisor.get("createTime"))):
        return False, f"supervisor (pid {pid}) is not running"
    age = now - float(status.get("writtenAt", 0))
    if age > STALE_AFTER_INTERVALS * interval:
        return False, f"status is stale ({age:.1f}s old, interval {interval:g}s): the supervisor is stuck"
    if status.get("state") != "running":
        return False, f"supervisor is {status.get('state')}"
    if down is not None:  # the supervisor's own view: unreachable, or full and refusing its writes
        return False, down
    trouble = _transport_trouble(transport) or _workers_trouble(status, interval)
    if trouble is not None:
        return False, trouble
    return True, f"ok: {_ready_workers(status)} workers, pid {pid}"


def _transport_trouble(transport: dict[str, Any]) -> str | None:
    if transport.get("full"):
        return (f"the spool's filesystem is full: {transport.get('ackHolds', 0)} handled message(s) wait for "
                f"their acks, {transport.get('stranded', 0)} transition(s) wait for room (they are retried)")
    if transport.get("stranded"):
        return f"{transport['stranded']} message(s) stranded in processing/ (retried): {transport.get('error')}"
    unserved = transport.get("unservedGroups") or {}
    if unserved:
        group, why = next(iter(unserved.items()))
        more = f" (and {len(unserved) - 1} more group(s))" if len(unserved) > 1 else ""
        return f"group {group} is not served: {why}{more}"
    return None


def _workers_trouble(status: dict[str, Any], interval: float) -> str | None:
    workers = status.get("workers", [])
    expected, ready = _expected_workers(status), _ready_workers(status)
    if ready < expected:
        return f"{ready} of {expected} workers ready"
    for worker in workers:
        # The heartbeat's age when the (fresh) status was written: adding the
        # status's own age would count up to one interval twice and flap.
        hb_age = worker.get("heartbeatAge")
        if hb_age is not None and hb_age > HEARTBEAT_LATE_INTERVALS * interval:
            return f"worker {worker.get('pid')} missed heartbeats ({hb_age:.1f}s since the last)"
    return None


def _readiness(status: dict[str, Any] | None, down: str | None, own: OwnFacts | None) -> tuple[bool, str]:
    if status is None:
        return False, NO_STATUS
    expected, ready = _expected_workers(status), _ready_workers(status)
    if status.get("state") != "running":
        return False, f"the supervisor is {status.get('state')}"
    if own is not None and not own.booted:
        return False, f"workers are booting ({ready} of {expected} ready)"
    if not ready:
        return False, f"no worker is ready (0 of {expected}; being replaced)"
    if down is not None:
        return False, down
    if own is not None and own.spool_root is not None and not os.path.isdir(own.spool_root):
        return False, f"the spool root {own.spool_root} is gone"
    return True, f"{ready} of {expected} workers ready"


def _expected_workers(status: dict[str, Any]) -> int:
    return int(status.get("expectedWorkers", len(status.get("workers", []))))


def _ready_workers(status: dict[str, Any]) -> int:
    """Workers that take deliveries: ready, or ready with some in hand (busy)."""
    return sum(1 for w in status.get("workers", []) if w.get("state") in ("ready", "busy"))
