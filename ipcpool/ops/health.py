"""Heartbeats, psutil readings, ``status.json`` and the health verdict.

The supervisor writes ``<root>/.ipcpool/status.json`` atomically every
heartbeat interval; ``ipcpool health`` and ``ipcpool status`` only read it
(plus one psutil look at the supervisor's pid), so a probe never disturbs
the pool.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ipcpool.message import now_iso

STATUS_FILE = "status.json"
STALE_AFTER_INTERVALS = 3  # status older than this many intervals: the supervisor is not running
HEARTBEAT_LATE_INTERVALS = 2  # a worker heartbeat older than this many intervals: unhealthy


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


def process_create_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def create_time_of(pid: int) -> float | None:
    """:func:`process_create_time`, or None when the process cannot be read."""
    try:
        return process_create_time(pid)
    except psutil.Error:
        return None


def status_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / ".ipcpool" / STATUS_FILE


def write_status(root: str | os.PathLike[str], status: dict[str, Any], *, mode: int = 0o600) -> None:
    """Atomic write: readers see the previous record or this one, never half.

    ``mode`` is set whatever the umask: in shared mode writers may read the
    record, never write it (they could forge the health verdict). On a full
    filesystem (the very time an operator needs the status) the record is
    rewritten in place instead, when it fits in the space the file already
    has: readers retry a record caught half-written.
    """
    path = status_path(root)
    data = json.dumps(status, separators=(",", ":"), default=str).encode()
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:  # a short write (a nearly full disk) goes on from where it stopped
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _rewrite_in_place(path, data):
            raise


def _rewrite_in_place(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if len(data) > os.fstat(fd).st_blocks * 512:
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_status(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    for _attempt in range(3):  # a record rewritten in place may be caught half-written
        try:
            return json.loads(status_path(root).read_bytes())
        except ValueError:
            time.sleep(0.01)
        except OSError:
            return None
    return None


def transport_stats(status: dict[str, Any] | None) -> dict[str, Any]:
    """The transport's stats in a record: under ``"transport"``, or under ``"spool"`` in a record written by
    an older ipcpool (whose ``"transport"`` was only the backend's name)."""
    if not status:
        return {}
    stats = status.get("transport")
    return stats if isinstance(stats, dict) else status.get("spool") or {}


def transport_name(status: dict[str, Any]) -> str | None:
    """The record's transport: spool or redis."""
    transport = status.get("transport")
    return transport.get("backend") if isinstance(transport, dict) else transport


def spool_space(root: str | os.PathLike[str]) -> dict[str, int] | None:
    """Free bytes and free inodes on the spool's filesystem (for unprivileged users), or None."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    return {"freeBytes": st.f_bavail * st.f_frsize, "freeInodes": st.f_favail}


def status_is_live(status: dict[str, Any] | None, *, now: float | None = None) -> bool:
    """Whether the record is a live supervisor's as far as the file tells: fresh (rewritten every interval) and
    not in a final state. Readable from another pid namespace or a VM (an agent in a container on a Mac)."""
    if status is None or status.get("state") in ("stopped", "halted", "failed"):
        return False
    age = (time.time() if now is None else now) - float(status.get("writtenAt", 0))
    return age <= STALE_AFTER_INTERVALS * float(status.get("interval", 1.0))


def supervisor_alive(status: dict[str, Any] | None) -> bool:
    """The record is live and its supervisor's process still runs here (the same one: its start time)."""
    if status is None or not status_is_live(status):
        return False
    supervisor = status.get("supervisor") or {}
    pid = supervisor.get("pid")
    return isinstance(pid, int) and pid_alive(pid, supervisor.get("createTime"))


def verdict(status: dict[str, Any] | None, *, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one-line reason) for ``ipcpool health``."""
    if status is None:
        return False, "no status.json: the supervisor has not started on this root"
    now = time.time() if now is None else now
    supervisor = status.get("supervisor", {})
    interval = float(status.get("interval", 1.0))
    pid = supervisor.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid, supervisor.get("createTime")):
        return False, f"supervisor (pid {pid}) is not running"
    age = now - float(status.get("writtenAt", 0))
    if age > STALE_AFTER_INTERVALS * interval:
        return False, f"status is stale ({age:.1f}s old, interval {interval:g}s): the supervisor is stuck"
    if status.get("state") != "running":
        return False, f"supervisor is {status.get('state')}"
    spool = transport_stats(status)
    if spool.get("redisDown"):  # the supervisor's own view: unreachable, or full and refusing its writes
        return False, spool.get("error") or "Redis is unreachable"
    if spool.get("full"):
        return False, (f"the spool's filesystem is full: {spool.get('ackHolds', 0)} handled message(s) wait for "
                       f"their acks, {spool.get('stranded', 0)} transition(s) wait for room (they are retried)")
    if spool.get("stranded"):
        return False, f"{spool['stranded']} message(s) stranded in processing/ (retried): {spool.get('error')}"
    unserved = spool.get("unservedGroups") or {}
    if unserved:
        group, why = next(iter(unserved.items()))
        more = f" (and {len(unserved) - 1} more group(s))" if len(unserved) > 1 else ""
        return False, f"group {group} is not served: {why}{more}"
    workers = status.get("workers", [])
    expected = int(status.get("expectedWorkers", len(workers)))
    ready = [w for w in workers if w.get("state") in ("ready", "busy")]
    if len(ready) < expected:
        return False, f"{len(ready)} of {expected} workers ready"
    for worker in workers:
        # The heartbeat's age when the (fresh) status was written: adding the
        # status's own age would count up to one interval twice and flap.
        hb_age = worker.get("heartbeatAge")
        if hb_age is not None and hb_age > HEARTBEAT_LATE_INTERVALS * interval:
            return False, f"worker {worker.get('pid')} missed heartbeats ({hb_age:.1f}s since the last)"
    return True, f"ok: {len(ready)} workers, pid {pid}"
