"""health.verdict and status rendering on constructed records (no processes needed beyond this one)."""

from __future__ import annotations

import os
import time

import psutil

from ipcpool.cli.views import render_table
from ipcpool.ops.health import heartbeat_envelope, verdict


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
    text = render_table(_status(), (True, "ok"))
    assert "main/x.json" in text and "active" in text and "UNHEALTHY" not in text
    assert text.count("\n") > 8
