"""The status record: built from the supervisor's state, rendered as a table.

``status.json`` is the supervisor's only public view of itself: ``ipcpool
health`` judges it, ``ipcpool status`` prints it, and operators may read it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ipcpool.health import spool_space
from ipcpool.pool import wall_to_iso
from ipcpool.spool import ERROR_SUFFIX, ERRORS

if TYPE_CHECKING:
    from ipcpool.supervisor import Supervisor


def build_status(sup: Supervisor, now: float) -> dict[str, Any]:
    wall = time.time()
    interval = sup.config.heartbeat.interval
    workers = []
    for worker in sup.workers:
        current, started = worker.current()
        reading = worker.reading
        busy = bool(worker.held)
        state = worker.state.value
        if state == "ready" and busy:
            state = "busy"
        workers.append({
            "pid": worker.pid,
            "slot": worker.slot,
            "state": state,
            "heartbeatAge": round(now - worker.last_heartbeat, 3),
            "rssMb": round(reading.rss_mb, 1) if reading else None,
            "cpuPercent": round(reading.cpu_percent, 1) if reading else None,
            "handled": worker.handled,
            "failed": worker.failed,
            "restarts": sup.restarts[worker.slot],
            "held": len(worker.held),
            "currentMessage": f"{current.group}/{current.name}" if current else None,
            "currentAge": round(now - started, 3) if current else None,
            "createTime": _create_time(worker.probe),
        })
    return {
        "version": 1,
        "state": sup.state,
        "interval": interval,
        "writtenAt": wall,
        "writtenAtIso": wall_to_iso(wall),
        "root": str(sup.spool.root),
        "supervisor": {
            "pid": os.getpid(),
            "startedAt": wall_to_iso(sup.started_wall),
            "createTime": _own_create_time(),
            "uptime": round(wall - sup.started_wall, 1),
        },
        "expectedWorkers": sup.pool_size,
        "workers": workers,
        "groups": _groups(sup, now),
        "externalHeartbeats": [
            {"group": group, "processId": pid, "status": rec["status"], "age": round(wall - rec["at"], 1)}
            for (group, pid), rec in sorted(sup.external.items())
        ],
        "totals": dict(sup.totals, queued=len(sup.pending), inflight=len(sup.inflight)),
        "spool": _spool(sup),
    }


def _spool(sup: Supervisor) -> dict[str, Any]:
    """The spool's own troubles: stranded transitions, a full filesystem, free space."""
    stranded = sup.stranded
    errors = [e.error for e in stranded.entries.values()]
    return {
        "full": stranded.no_space,
        "stranded": len(stranded),
        "ackHolds": stranded.ack_holds,
        "error": errors[0] if errors else None,
        **(spool_space(sup.spool.root) or {}),
    }


def _groups(sup: Supervisor, now: float) -> dict[str, Any]:
    stats: dict[str, dict[str, Any]] = {
        g: {"queued": 0, "processing": 0, "errors": sup.errors_cache.get(g, (0, 0))[1], "oldestQueuedAge": None}
        for g in sorted(sup.groups)
    }
    for (group, _name), seen in sup.pending.items():
        entry = stats.get(group)
        if entry is None:
            continue
        entry["queued"] += 1
        if entry["oldestQueuedAge"] is None:
            entry["oldestQueuedAge"] = round(now - seen, 3)
    for group, _name in sup.inflight:
        if group in stats:
            stats[group]["processing"] += 1
    return stats


def count_errors(sup: Supervisor, group: str) -> int:
    """Quarantined messages in a group, recounted (during rescans) only when the folder changed."""
    path = sup.spool.path(group, ERRORS)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return 0
    cached = sup.errors_cache.get(group)
    if cached and cached[0] == mtime:
        return cached[1]
    with os.scandir(path) as entries:
        count = sum(1 for e in entries if e.name.endswith(ERROR_SUFFIX))
    sup.errors_cache[group] = (mtime, count)
    return count


def _create_time(probe: Any) -> float | None:
    process = getattr(probe, "_process", None)
    try:
        return process.create_time() if process is not None else None
    except Exception:  # noqa: BLE001 - a vanished process has no create time
        return None


def _own_create_time() -> float | None:
    from ipcpool.health import process_create_time

    try:
        return process_create_time(os.getpid())
    except Exception:  # noqa: BLE001
        return None


def render_table(status: dict[str, Any], healthy: tuple[bool, str]) -> str:
    """``ipcpool status``: the record as a readable table."""
    sup = status.get("supervisor", {})
    lines = [
        f"supervisor pid {sup.get('pid')}  state {status.get('state')}  up {sup.get('uptime')}s  "
        f"root {status.get('root')}",
        f"health: {'OK' if healthy[0] else 'UNHEALTHY'} - {healthy[1]}",
        "",
        f"{'WORKER':>8} {'SLOT':>4} {'STATE':<9} {'HB AGE':>7} {'RSS MB':>7} {'CPU%':>6} "
        f"{'HANDLED':>8} {'FAILED':>7} {'RESTARTS':>8}  CURRENT",
    ]
    for w in status.get("workers", []):
        current = f"{w['currentMessage']} ({w['currentAge']}s)" if w.get("currentMessage") else "-"
        lines.append(
            f"{w['pid']:>8} {w['slot']:>4} {w['state']:<9} {w['heartbeatAge']:>7} {_n(w.get('rssMb')):>7} "
            f"{_n(w.get('cpuPercent')):>6} {w['handled']:>8} {w['failed']:>7} {w['restarts']:>8}  {current}"
        )
    lines += ["", f"{'GROUP':<24} {'QUEUED':>7} {'PROCESSING':>10} {'ERRORS':>7} {'OLDEST':>8}"]
    for name, g in status.get("groups", {}).items():
        lines.append(f"{name:<24} {g['queued']:>7} {g['processing']:>10} {g['errors']:>7} "
                     f"{_n(g.get('oldestQueuedAge')):>8}")
    external = status.get("externalHeartbeats", [])
    if external:
        lines += ["", f"{'EXTERNAL HEARTBEAT':<24} {'PROCESS':>10} {'STATUS':<10} {'AGE':>7}"]
        for h in external:
            lines.append(f"{h['group']:<24} {h['processId']!s:>10} {h['status']!s:<10} {h['age']:>7}")
    totals = status.get("totals", {})
    lines += ["", "totals: " + "  ".join(f"{k} {v}" for k, v in totals.items())]
    spool = status.get("spool") or {}
    if spool.get("stranded") or spool.get("full"):
        lines.append(f"spool: {'FULL; ' if spool.get('full') else ''}{spool.get('stranded')} stranded "
                     f"({spool.get('ackHolds')} acks waiting): {spool.get('error')}")
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "-" if value is None else str(value)
