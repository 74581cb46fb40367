"""The status record: the supervisor's snapshot, as typed values, and the ``status.json`` they are written as.

``status.json`` is the supervisor's only public view of itself: ``ipcpool
health`` judges it, ``ipcpool status`` prints it, and operators may read it.
The supervisor fills a :class:`PoolSnapshot` (``Supervisor.snapshot``) and
:func:`status_record` turns it into the record; nothing here knows the
supervisor, so nothing here imports it.

The transport's stats are under ``"transport"``, beside its name
(``"backend"``); ``"spool"`` repeats them (see :func:`status_record`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def wall_to_iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True, slots=True)
class GroupLoad:
    """One group's share of one worker's (or the whole pool's) deliveries."""

    processing: int = 0  # handed over, no result back yet (done ones not reported yet included)
    held: int = 0  # handed over, not started yet (prefetched)
    running: int = 0  # its handler runs now


@dataclass(frozen=True, slots=True)
class Running:
    """The delivery a worker's handler runs now."""

    seq: int
    group: str
    name: str  # the transport's name for the message (a file's key, a stream entry)
    started: float  # monotonic


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the status shows it."""

    pid: int
    slot: int
    state: str  # starting, ready, stopping, dead (a ready worker with work in hand is shown busy)
    last_heartbeat: float  # monotonic
    rss_mb: float | None  # psutil's last reading (None before the first)
    cpu_percent: float | None
    create_time: float | None
    handled: int
    failed: int
    restarts: int
    load: Mapping[str, GroupLoad]  # by group
    current: Running | None
    told: Any = None  # what its last heartbeat said it runs (a dict with seq, id, type; or anything a worker sent)

    @property
    def in_hand(self) -> int:
        return sum(g.processing for g in self.load.values())

    @property
    def held(self) -> int:
        return sum(g.held for g in self.load.values())

    @property
    def running(self) -> int:
        return sum(g.running for g in self.load.values())


@dataclass(frozen=True, slots=True)
class ExternalHeartbeat:
    """A heartbeat message another process sent into a group (recorded, not handled)."""

    group: str
    process_id: str
    status: Any
    at: float  # wall clock


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The supervisor at one moment: what status.json, /metrics and /readyz are made of."""

    state: str  # starting, running, draining, stopped, halted, failed
    pid: int
    create_time: float | None
    started_wall: float
    wall: float  # time.time() when taken
    now: float  # the supervisor's monotonic clock when taken
    interval: float  # [heartbeat] interval: how often the record is rewritten
    root: str
    backend: str  # the transport's name: spool or redis
    http: str | None  # where /metrics is served
    expected_workers: int
    booted: bool  # every worker has been ready once (systemd heard READY=1)
    spool_root: str | None  # the spool root it serves (None on Redis): ready only while it is there
    workers: tuple[WorkerView, ...]
    finished: Mapping[str, Mapping[str, int]]  # finished messages by group and outcome
    totals: Mapping[str, int]
    reloads: Mapping[str, Any]
    external: tuple[ExternalHeartbeat, ...]
    transport: Mapping[str, Any]  # the transport's stats(): {"groups": {name: {...}}, "transport": {...}}
    schedules: tuple[Mapping[str, Any], ...] = ()  # [[schedule]]: each one's next due times and last published


def status_record(snap: PoolSnapshot) -> dict[str, Any]:
    """The record written to status.json (and announced to a shared transport)."""
    workers = [_worker(w, snap) for w in snap.workers]
    groups = _groups(snap)
    stats = dict(snap.transport["transport"])
    return {
        "version": 1,
        "state": snap.state,
        "interval": snap.interval,
        "writtenAt": snap.wall,
        "writtenAtIso": wall_to_iso(snap.wall),
        "root": snap.root,
        "transport": {"backend": snap.backend, **stats},
        "http": snap.http,
        "reloads": dict(snap.reloads),
        "supervisor": {
            "pid": snap.pid,
            "startedAt": wall_to_iso(snap.started_wall),
            "createTime": snap.create_time,
            "uptime": round(snap.wall - snap.started_wall, 1),
        },
        "expectedWorkers": snap.expected_workers,
        "workers": workers,
        "groups": groups,
        "externalHeartbeats": [
            {"group": h.group, "processId": h.process_id, "status": h.status, "age": round(snap.wall - h.at, 1)}
            for h in snap.external
        ],
        "schedules": [dict(schedule) for schedule in snap.schedules],
        "totals": dict(snap.totals, queued=sum(g["queued"] for g in groups.values()),
                       held=sum(w["held"] for w in workers), running=sum(w["running"] for w in workers),
                       inflight=sum(w.in_hand for w in snap.workers)),
        # The same stats under their old name, for readers written against an older ipcpool: an alias kept
        # for one release, then dropped. It said "spool" even on Redis: read "transport" (transport_stats).
        "spool": stats,
    }


def _worker(w: WorkerView, snap: PoolSnapshot) -> dict[str, Any]:
    running, held = w.running, w.held
    return {
        "pid": w.pid,
        "slot": w.slot,
        "state": "busy" if w.state == "ready" and (running or held) else w.state,
        "heartbeatAge": round(snap.now - w.last_heartbeat, 3),
        "rssMb": round(w.rss_mb, 1) if w.rss_mb is not None else None,
        "cpuPercent": round(w.cpu_percent, 1) if w.cpu_percent is not None else None,
        "handled": w.handled,
        "failed": w.failed,
        "restarts": w.restarts,
        "running": running,
        "held": held,  # handed over, not started yet (its prefetch)
        "currentMessage": _current_message(w),
        "currentAge": round(snap.now - w.current.started, 3) if w.current is not None else None,
        "createTime": w.create_time,
    }


def _groups(snap: PoolSnapshot) -> dict[str, dict[str, Any]]:
    """The transport's view of each group, with what the workers hold of it and what finished."""
    load: dict[str, list[int]] = {}
    for worker in snap.workers:
        for group, g in worker.load.items():
            row = load.setdefault(group, [0, 0, 0])
            row[0] += g.held
            row[1] += g.running
            row[2] += g.processing
    groups = {}
    for name, g in snap.transport["groups"].items():
        held, running, processing = load.get(name, (0, 0, 0))
        groups[name] = dict(g, held=held, running=running, processing=processing,
                            finished=dict(snap.finished.get(name, {})))
    return groups


def _current_message(w: WorkerView) -> dict[str, Any] | None:
    """The running message's id and type: from the worker's heartbeat when it is about this
    delivery, else the id its name gives (senders name files after ids)."""
    current = w.current
    if current is None:
        return None
    told = w.told
    if isinstance(told, dict) and told.get("seq") == current.seq:
        return {"id": told.get("id"), "type": told.get("type"), "group": current.group}
    name = current.name[current.name.rfind("/") + 1:]
    return {"id": name.rsplit(".", 1)[0], "type": None, "group": current.group}
