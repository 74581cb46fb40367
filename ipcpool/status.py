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
from ipcpool.spool import ERROR_SUFFIX, ERRORS, Spool, message_stem
from ipcpool.worker import SLOT_SEQ

if TYPE_CHECKING:
    from ipcpool.supervisor import Supervisor


def build_status(sup: Supervisor, now: float) -> dict[str, Any]:
    wall = time.time()
    interval = sup.config.heartbeat.interval
    workers = []
    for worker in sup.workers:
        current, started = worker.current()
        reading = worker.reading
        outstanding = worker.outstanding()
        state = worker.state.value
        if state == "ready" and outstanding:
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
            "running": 1 if current else 0,
            "held": outstanding - (1 if current else 0),  # handed over, not started yet (its prefetch)
            "currentMessage": _current_message(worker, current),
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
        "totals": dict(sup.totals, queued=len(sup.pending), held=sum(w["held"] for w in workers),
                       running=sum(w["running"] for w in workers), inflight=len(sup.inflight)),
        "spool": _spool(sup),
    }


def _current_message(worker: Any, current: Any) -> dict[str, Any] | None:
    """The running message's id and type: from the worker's heartbeat when it is about this
    delivery, else the id its file name gives (senders name files after ids)."""
    if current is None:
        return None
    told = worker.current_message
    if isinstance(told, dict) and told.get("seq") == current.seq:
        return {"id": told.get("id"), "type": told.get("type"), "group": current.group}
    return {"id": message_stem(current.name), "type": None, "group": current.group}


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
        g: {"queued": 0, "held": 0, "running": 0, "processing": 0, "errors": sup.errors_cache.get(g, (0, 0))[1],
            "oldestQueuedAge": None}
        for g in sorted(sup.groups)
    }
    for (group, _name), seen in sup.pending.items():
        entry = stats.get(group)
        if entry is None:
            continue
        entry["queued"] += 1
        if entry["oldestQueuedAge"] is None:
            entry["oldestQueuedAge"] = round(now - seen, 3)
    for worker in sup.workers:
        current, _started = worker.current()
        seq = int(worker.shared[SLOT_SEQ])
        for delivery in worker.held.values():
            entry = stats.get(delivery.group)
            if entry is None:
                continue
            entry["processing"] += 1
            if delivery is current:
                entry["running"] += 1
            elif delivery.seq > seq:  # not reached yet (those before it are done, not yet reported)
                entry["held"] += 1
    return stats


def folder_counts(spool: Spool) -> dict[str, dict[str, int]]:
    """What each group's folders hold, counted on disk: true with or without a supervisor."""
    counts = {}
    for group in spool.list_groups():
        try:
            with os.scandir(spool.path(group, ERRORS)) as entries:
                errors = sum(1 for e in entries if e.name.endswith(ERROR_SUFFIX))
        except FileNotFoundError:
            errors = 0
        counts[group] = {"queued": len(spool.scan_inboxes(group)), "processing": len(spool.scan_processing(group)),
                         "errors": errors}
    return counts


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


def render_table(status: dict[str, Any], healthy: tuple[bool, str], *, now: float | None = None) -> str:
    """``ipcpool status``: the record as a readable table (the folders alone when the supervisor is down)."""
    now = time.time() if now is None else now
    if "folders" in status:
        return _render_down(status, healthy, now)
    sup = status.get("supervisor", {})
    lines = [
        f"supervisor pid {sup.get('pid')}  state {status.get('state')}  up {sup.get('uptime')}s  "
        f"root {status.get('root')}",
        f"health: {'OK' if healthy[0] else 'UNHEALTHY'} - {healthy[1]}",
        f"snapshot: {now - float(status.get('writtenAt', now)):.1f}s old (written every {status.get('interval')}s)",
        "",
        f"{'WORKER':>8} {'SLOT':>4} {'STATE':<9} {'HB AGE':>7} {'RSS MB':>7} {'CPU%':>6} "
        f"{'HANDLED':>8} {'FAILED':>7} {'RESTARTS':>8} {'HELD':>5}  RUNNING",
    ]
    for w in status.get("workers", []):
        lines.append(
            f"{w['pid']:>8} {w['slot']:>4} {w['state']:<9} {w['heartbeatAge']:>7} {_n(w.get('rssMb')):>7} "
            f"{_n(w.get('cpuPercent')):>6} {w['handled']:>8} {w['failed']:>7} {w['restarts']:>8} "
            f"{w.get('held', 0):>5}  {_running(w)}"
        )
    lines += ["", f"{'GROUP':<24} {'QUEUED':>7} {'HELD':>6} {'RUNNING':>8} {'ERRORS':>7} {'OLDEST':>8}"]
    for name, g in status.get("groups", {}).items():
        lines.append(f"{name:<24} {g['queued']:>7} {g.get('held', 0):>6} {g.get('running', 0):>8} "
                     f"{g['errors']:>7} {_n(g.get('oldestQueuedAge')):>8}")
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


def _running(worker: dict[str, Any]) -> str:
    current = worker.get("currentMessage")
    if not current:
        return "-"
    if isinstance(current, str):  # a record from an older ipcpool
        return f"{current} ({worker.get('currentAge')}s)"
    return f"{current.get('type') or '?'} {current.get('id')} ({worker.get('currentAge')}s)"


def _render_down(status: dict[str, Any], healthy: tuple[bool, str], now: float) -> str:
    """No supervisor running (or a stale record): say so, and count what the folders hold."""
    sup = status.get("supervisor") or {}
    if sup:
        seen = f"last record: pid {sup.get('pid')}, state {status.get('state')}, " \
               f"{now - float(status.get('writtenAt', now)):.1f}s ago"
    else:
        seen = "no status.json: it never ran on this root"
    lines = [f"supervisor: DOWN ({healthy[1]})", seen, "",
             f"{'GROUP':<24} {'QUEUED':>7} {'PROCESSING':>10} {'ERRORS':>7}"]
    for name, g in status["folders"].items():
        lines.append(f"{name:<24} {g['queued']:>7} {g['processing']:>10} {g['errors']:>7}")
    if not status["folders"]:
        lines.append("(no group folders)")
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "-" if value is None else str(value)
