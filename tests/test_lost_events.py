"""Lost events: inotify overflow, and the polling watcher. The directory is the truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import records, wait_until, write_config

from ipcpool import Client

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def _can_lower_queue() -> bool:
    return MAX_QUEUED.exists() and os.access(MAX_QUEUED, os.W_OK)


def _flood(client: Client, count: int) -> list[str]:
    return [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(count)]


def test_inotify_overflow_triggers_a_rescan_and_nothing_is_lost(tmp_path, root, supervisor_factory):
    # Periodic rescans far away: only the overflow-triggered rescan can find what the kernel dropped.
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"rescan_interval": 600.0}})
    if _can_lower_queue():
        original = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text("16\n")  # read once, when the supervisor's inotify instance is created
        try:
            sup = supervisor_factory(config)
        finally:
            MAX_QUEUED.write_text(original)
        count = 3000
    else:
        sup = supervisor_factory(config)
        count = int(MAX_QUEUED.read_text()) + 4000 if MAX_QUEUED.exists() else 20000
    # Stage every file first, then rename them all in a tight loop: thousands of events in a
    # few milliseconds, far more than the event queue holds.
    ids = [f"flood-{i}" for i in range(count)]
    staged = root / "main" / "tmp"
    for message_id in ids:
        body = {"id": message_id, "type": "task", "payload": {}, "requiresAck": True}
        (staged / f"{message_id}.json").write_text(json.dumps(body))
    for message_id in ids:
        os.rename(staged / f"{message_id}.json", root / "main" / "messages" / f"{message_id}.json")
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in ids), 180,
               message=f"all {count} acks")
    assert "inotify overflow" in sup.log()
    assert sorted({r["id"] for r in records(tmp_path)}) == sorted(ids)
    assert not os.listdir(root / "main" / "messages")
    sup.stop()


@pytest.mark.parametrize("watcher", ["polling"])
def test_polling_watcher_handles_messages(tmp_path, root, supervisor_factory, watcher):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"watcher": watcher,
                                                                          "rescan_interval": 600.0}})
    sup = supervisor_factory(config)
    client = Client(root, "main")
    ids = _flood(client, 50)
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in ids), 60, message="acks")
    sup.stop()
