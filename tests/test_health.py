"""health.judge and status rendering on constructed records (no processes needed beyond this one)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil
import pytest

from ipcpool.cli.views import render_table
from ipcpool.ops.health import Verdict, heartbeat_envelope, judge
from ipcpool.ops.sdnotify import status_line


def _status(**overrides):
    me = psutil.Process()
    status = {
        "state": "running", "interval": 1.0, "writtenAt": time.time(),
        "supervisor": {"pid": os.getpid(), "createTime": me.create_time(), "uptime": 5.0},
        "expectedWorkers": 2,
        "workers": [
            {"pid": 11, "slot": 0, "state": "ready", "heartbeatAge": 0.4, "rssMb": 20.0, "cpuPercent": 0.0,
             "handled": 3, "failed": 0, "restarts": 0, "currentMessage": None, "currentAge": None},
            {"pid": 12, "slot": 1, "state": "busy", "heartbeatAge": 0.9, "rssMb": 21.0, "cpuPercent": 1.0,
             "handled": 4, "failed": 1, "restarts": 1, "currentMessage": "main/x.json", "currentAge": 0.2},
        ],
        "groups": {"main": {"queued": 1, "processing": 1, "errors": 0, "oldestQueuedAge": 0.1}},
        "externalHeartbeats": [{"group": "main", "processId": 7, "status": "active", "age": 1.0}],
        "totals": {"handled": 7},
    }
    status.update(overrides)
    return status


def verdict(status, **kwargs) -> tuple[bool, str]:
    """Health alone, as ``ipcpool health`` says it."""
    judged = judge(status, **kwargs)
    return judged.healthy, judged.reason


@dataclass(frozen=True)
class Own:
    """The supervisor judging its own record: what it knows beside it."""

    booted: bool = True
    spool_root: str | None = None


def test_healthy_record_is_ok():
    ok, reason = verdict(_status())
    assert ok, reason
    assert reason.startswith("ok")


def test_missing_status_is_unhealthy():
    assert verdict(None) == (False, "no status.json: the supervisor has not started on this root")


def test_dead_supervisor_is_unhealthy():
    ok, reason = verdict(_status(supervisor={"pid": 2**22 + 12345, "createTime": 1.0}))
    assert not ok and "not running" in reason


def test_reused_pid_is_not_mistaken_for_the_supervisor():
    ok, reason = verdict(_status(supervisor={"pid": os.getpid(), "createTime": 1.0}))
    assert not ok and "not running" in reason


def test_stale_status_is_unhealthy():
    ok, reason = verdict(_status(writtenAt=time.time() - 10))
    assert not ok and "stale" in reason


def test_missing_worker_is_unhealthy():
    status = _status()
    status["workers"] = status["workers"][:1]
    ok, reason = verdict(status)
    assert not ok and "1 of 2 workers ready" in reason


def test_worker_with_late_heartbeat_is_unhealthy():
    status = _status()
    status["workers"][1]["heartbeatAge"] = 2.5
    ok, reason = verdict(status)
    assert not ok and "missed heartbeats" in reason and "12" in reason


def test_draining_supervisor_is_unhealthy():
    ok, reason = verdict(_status(state="draining"))
    assert not ok and "draining" in reason


def test_heartbeat_envelope_has_the_original_shape():
    env = heartbeat_envelope(pid=5, busy=True, current="main/a.json", current_age=0.5, handled=2, failed=1)
    assert env["type"] == "heartbeat"
    assert env["payload"]["processId"] == 5 and env["payload"]["status"] == "busy"
    assert {"id", "timestamp", "groupFolder"} <= set(env)


def test_status_table_names_every_worker_group_and_heartbeat():
    text = render_table(_status(), judge(_status()))
    assert "main/x.json" in text and "active" in text and "UNHEALTHY" not in text
    assert text.count("\n") > 8


def test_ready_means_running_booted_one_worker_ready_and_the_transport_reachable(tmp_path):
    own = Own(spool_root=str(tmp_path))
    judged = judge(_status(), own=own)
    assert (judged.ready, judged.ready_reason) == (True, "2 of 2 workers ready")
    assert judge(_status(state="draining"), own=own).ready_reason == "the supervisor is draining"
    assert judge(_status(), own=Own(booted=False)).ready_reason == "workers are booting (2 of 2 ready)"
    starting = _status()
    for worker in starting["workers"]:
        worker["state"] = "starting"
    assert judge(starting, own=own).ready_reason == "no worker is ready (0 of 2; being replaced)"
    gone = str(tmp_path / "gone")
    assert judge(_status(), own=Own(spool_root=gone)).ready_reason == f"the spool root {gone} is gone"


def test_a_worker_short_or_a_group_not_served_is_unhealthy_but_still_ready():
    short = _status()
    short["workers"] = short["workers"][:1]
    unserved = _status(transport={"unservedGroups": {"agent8": "owned by another user"}})
    for status in (short, unserved):
        judged = judge(status, own=Own())
        assert not judged.healthy and judged.ready and judged.transport_up, judged


@pytest.mark.parametrize("stats", [{"redisDown": True, "error": "Redis at 127.0.0.1:1 is unreachable"},
                                   {"redisDown": True}])
def test_a_transport_down_is_one_fact_for_health_readiness_and_metrics(stats):
    for status in (_status(transport={"backend": "redis", **stats}), _status(transport="redis", spool=stats)):
        judged = judge(status, own=Own())
        reason = stats.get("error") or "Redis is unreachable"
        assert judged == Verdict(healthy=False, reason=reason, ready=False, ready_reason=reason, transport_up=False)


def test_the_transport_looked_at_from_here_is_asked_only_of_an_otherwise_healthy_record():
    asked: list[bool] = []

    def unreachable() -> str:
        asked.append(True)
        return "Redis at 127.0.0.1:1 is unreachable"

    judged = judge(_status(), reach=unreachable)
    assert (judged.healthy, judged.reason, judged.transport_up) == (False, "Redis at 127.0.0.1:1 is unreachable", False)
    assert not judge(_status(state="draining"), reach=unreachable).healthy
    assert len(asked) == 1, "a pool already unhealthy needs no round trip to Redis"


def test_the_supervisor_judging_itself_is_not_looked_up_by_pid():
    status = _status(supervisor={"pid": 2**22 + 12345, "createTime": 1.0, "uptime": 5.0})
    assert not judge(status).healthy
    assert judge(status, own=Own()).healthy


def test_systemds_status_line_says_why_only_while_unhealthy_and_on_one_line():
    status = _status(totals={"handled": 7, "queued": 1, "inflight": 2})
    assert status_line(status, judge(status, own=Own())) == "STATUS=2 workers, 1 queued, 2 in flight, 7 handled"
    status["transport"] = {"stranded": 1, "error": "rename main/x\nREADY=1.json: EIO"}
    line = status_line(status, judge(status, own=Own()))
    assert line.startswith("STATUS=2 workers, 1 queued, 2 in flight, 7 handled; unhealthy: 1 message(s) stranded")
    assert "\n" not in line and "x\\nREADY=1" in line, "a writer's file name cannot add an assignment"
