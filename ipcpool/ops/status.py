"""The status record: the supervisor's snapshot plus the transport's stats.

``status.json`` is the supervisor's only public view of itself: ``ipcpool
health`` judges it, ``ipcpool status`` prints it, and operators may read it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ipcpool.pool import wall_to_iso
from ipcpool.worker import SLOT_SEQ

if TYPE_CHECKING:
    from ipcpool.supervisor import Supervisor


def build_status(sup: Supervisor, now: float, source_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The supervisor's snapshot of its workers, with the transport's view of the queues beside it
    (``source_stats``: that view as last read, when a fresh one would cost a round trip)."""
    wall = time.time()
    interval = sup.config.heartbeat.interval
    source = sup.source.stats() if source_stats is None else source_stats
    finished = sup.metrics.by_group()
    groups = {name: dict(g, held=0, running=0, processing=0, finished=finished.get(name, {}))
              for name, g in source["groups"].items()}
    workers = []
    for worker in sup.workers:
        current, started = worker.current()
        reading = worker.reading
        outstanding = worker.outstanding()
        state = worker.state.value
        if state == "ready" and outstanding:
            state = "busy"
        _count_held(worker, current, groups)
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
        "root": str(sup.local.root),
        "transport": sup.source.backend,
        "http": sup.http.address if sup.http is not None else None,
        "reloads": sup.reloads.as_status(sup.generation, sup.reloading is not None),
        "supervisor": {
            "pid": os.getpid(),
            "startedAt": wall_to_iso(sup.started_wall),
            "createTime": _own_create_time(),
            "uptime": round(wall - sup.started_wall, 1),
        },
        "expectedWorkers": sup.pool_size,
        "workers": workers,
        "groups": groups,
        "externalHeartbeats": [
            {"group": group, "processId": pid, "status": rec["status"], "age": round(wall - rec["at"], 1)}
            for (group, pid), rec in sorted(sup.external.items())
        ],
        "totals": dict(sup.totals, queued=sum(g["queued"] for g in groups.values()),
                       held=sum(w["held"] for w in workers), running=sum(w["running"] for w in workers),
                       inflight=sum(len(w.held) for w in sup.workers)),
        "spool": source["transport"],
    }


def _count_held(worker: Any, current: Any, groups: dict[str, dict[str, Any]]) -> None:
    seq = int(worker.shared[SLOT_SEQ])
    for delivery in worker.held.values():
        entry = groups.get(delivery.group)
        if entry is None:
            continue
        entry["processing"] += 1
        if delivery is current:
            entry["running"] += 1
        elif delivery.seq > seq:  # not reached yet (those before it are done, not yet reported)
            entry["held"] += 1


def _current_message(worker: Any, current: Any) -> dict[str, Any] | None:
    """The running message's id and type: from the worker's heartbeat when it is about this
    delivery, else the id its name gives (senders name files after ids)."""
    if current is None:
        return None
    told = worker.current_message
    if isinstance(told, dict) and told.get("seq") == current.seq:
        return {"id": told.get("id"), "type": told.get("type"), "group": current.group}
    name = current.name[current.name.rfind("/") + 1:]
    return {"id": name.rsplit(".", 1)[0], "type": None, "group": current.group}


def _create_time(probe: Any) -> float | None:
    process = getattr(probe, "_process", None)
    try:
        return process.create_time() if process is not None else None
    except Exception:  # noqa: BLE001 - a vanished process has no create time
        return None


def _own_create_time() -> float | None:
    from ipcpool.ops.health import process_create_time

    try:
        return process_create_time(os.getpid())
    except Exception:  # noqa: BLE001
        return None
