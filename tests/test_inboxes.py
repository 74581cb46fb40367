"""The original system's second inbox: task commands in ``<group>/tasks/`` go through the same pool,
with the same guarantees, routed by their own ``type``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import records, wait_until, write_config

HANDLERS = {"schedule_task": "recorder:record", "legacy": "recorder:record", "task": "recorder:record"}
SECTIONS = {"spool": {"inboxes": ["messages", "tasks"]}}


def _agent_writes(root: Path, group: str, body: bytes, folder: str = "tasks") -> str:
    """As the original system's agents do: ``<ms>-<rand>.json.tmp``, then renamed in place."""
    name = f"{int(time.time() * 1000)}-{os.urandom(3).hex()}.json"
    tmp = root / group / folder / f"{name}.tmp"
    tmp.write_bytes(body)
    os.rename(tmp, root / group / folder / name)
    return name


def _task(kind: str, task_id: str) -> bytes:
    return json.dumps({"type": kind, "taskId": task_id, "prompt": "summarise the news",
                       "schedule_type": "cron", "schedule_value": "0 9 * * *", "context_mode": "group",
                       "targetJid": "123@g.us", "createdBy": "agent", "timestamp": "2026-12-01T09:00:00Z"}).encode()


def _names(root: Path, *parts: str) -> list[str]:
    folder = root.joinpath(*parts)
    return sorted(n for n in os.listdir(folder) if not (folder / n).is_dir()) if folder.exists() else []


def test_task_commands_go_to_the_handler_of_their_type_else_legacy(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=HANDLERS, sections=SECTIONS)
    sup = supervisor_factory(config)
    assert (root / "main" / "tasks").is_dir() and (root / "main" / "processing" / "tasks").is_dir()
    scheduled = _agent_writes(root, "main", _task("schedule_task", "t-1"))
    paused = _agent_writes(root, "main", _task("pause_task", "t-1"))
    wait_until(lambda: len(records(tmp_path)) == 2, 30, message="both task commands handled")
    by_type = {r["type"]: r for r in records(tmp_path)}
    assert by_type["schedule_task"]["inbox"] == "tasks" and by_type["schedule_task"]["legacy"] is True
    assert by_type["schedule_task"]["payload"]["taskId"] == "t-1", "the whole body is the payload"
    assert by_type["schedule_task"]["id"] == scheduled[:-5]
    assert by_type["pause_task"]["id"] == paused[:-5], "no pause_task handler: the legacy one took it"
    assert _names(root, "main", "tasks") == [] and _names(root, "main", "processing", "tasks") == []
    sup.stop()


def test_the_same_name_in_both_inboxes_is_two_messages(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=HANDLERS, sections=SECTIONS)
    sup = supervisor_factory(config)
    os.kill(sup.pid, signal.SIGSTOP)  # both land before either is claimed
    try:
        for folder, body in (("messages", b'{"n": 1}'), ("tasks", _task("schedule_task", "t-2"))):
            tmp = root / "main" / folder / "same.json.tmp"
            tmp.write_bytes(body)
            os.rename(tmp, root / "main" / folder / "same.json")
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    wait_until(lambda: len(records(tmp_path)) == 2, 30, message="both handled")
    assert sorted(r["inbox"] for r in records(tmp_path)) == ["messages", "tasks"]
    sup.stop()


def test_a_killed_supervisor_returns_claimed_task_commands_to_their_inbox(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"schedule_task": "recorder:record"}, sections=SECTIONS)
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    body = json.dumps({"type": "schedule_task", "taskId": "t-3", "wait_file": str(gate)}).encode()
    name = _agent_writes(root, "main", body)
    wait_until(lambda: records(tmp_path), 30, message="the command started")
    assert _names(root, "main", "processing", "tasks") == [name]
    sup.kill()  # SIGKILL: its worker notices and exits by itself; the new one waits for that
    sup2 = supervisor_factory(config)
    assert "1 recovered from processing/" in sup2.log_since_start()
    gate.touch()
    wait_until(lambda: len(records(tmp_path)) >= 2 and not _names(root, "main", "tasks")
               and not _names(root, "main", "processing", "tasks"), 30, message="handled after the restart")
    assert {r["inbox"] for r in records(tmp_path)} == {"tasks"}
    sup2.stop()


def test_a_task_command_that_fails_is_quarantined_and_retried_into_its_inbox(tmp_path, root, env,
                                                                             supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"schedule_task": "recorder:record"}, sections=SECTIONS)
    sup = supervisor_factory(config)
    name = _agent_writes(root, "main", _task("cancel_task", "t-4"))  # no handler for it, and no legacy one
    wait_until(lambda: any(n.endswith(".error.json") for n in _names(root, "main", "errors")), 30,
               message="quarantined")
    (record_name,) = [n for n in _names(root, "main", "errors") if n.endswith(".error.json")]
    record = json.loads((root / "main" / "errors" / record_name).read_text())
    assert record["inbox"] == "tasks" and record["originalName"] == name and record["type"] == "cancel_task"
    assert "no handler for type cancel_task" in record["reason"]
    # with a handler for it now, `errors retry` puts it back where it came from
    config = write_config(tmp_path / "c.toml", root, handlers={"schedule_task": "recorder:record",
                                                               "cancel_task": "recorder:record"}, sections=SECTIONS)
    sup.stop()
    sup = supervisor_factory(config)
    out = subprocess.run([sys.executable, "-m", "ipcpool", "errors", "retry", "--config", str(config),
                          name[:-5]], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"tasks/{name}" in out.stdout
    wait_until(lambda: records(tmp_path), 30, message="handled after the retry")
    assert records(tmp_path)[0]["inbox"] == "tasks" and records(tmp_path)[0]["type"] == "cancel_task"
    sup.stop()


def test_rescans_find_task_commands_the_watcher_missed(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=HANDLERS, sections={
        "spool": {"inboxes": ["messages", "tasks"], "watcher": "polling", "rescan_interval": 0.5}})
    sup = supervisor_factory(config)
    _agent_writes(root, "main", _task("schedule_task", "t-5"))
    wait_until(lambda: records(tmp_path), 30, message="found and handled")
    sup.stop()
