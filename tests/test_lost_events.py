"""Lost events: inotify overflow, the polling watcher, rescans. The directory is the truth.

Nothing here changes a machine-wide setting: the overflow is produced with the
kernel's own queue limit (read from /proc, never written) by stopping the
supervisor while more events than that arrive.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import acked, files, inotify_instances, records, wait_until, write_config

from ipcpool import Client

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
OVERFLOW_LINE = "filesystem events were lost (inotify overflow); rescanning now"
RESCANS_OFF = 3600.0  # a rescan_interval no test outlives: only events (or an overflow) can find a message

linux_only = pytest.mark.skipif(not MAX_QUEUED.exists(), reason="inotify only")


@pytest.fixture
def shm_root() -> Iterator[Path]:
    """A spool root on tmpfs (fast creates for tens of thousands of files), in a folder made for this test."""
    base = Path(tempfile.mkdtemp(prefix="ipcpool-overflow-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        yield base / "ipc"
    finally:
        shutil.rmtree(base)


def _stage_and_rename(root: Path, group: str, ids: list[str]) -> None:
    """Write each message into tmp/, then rename them all into messages/: one event each."""
    staged = root / group / "tmp"
    for message_id in ids:
        body = {"id": message_id, "type": "task", "payload": {}, "requiresAck": True}
        (staged / f"{message_id}.json").write_text(json.dumps(body))
    for message_id in ids:
        os.rename(staged / f"{message_id}.json", root / group / "messages" / f"{message_id}.json")


@linux_only
def test_inotify_overflow_triggers_a_rescan_and_nothing_is_lost(tmp_path, shm_root, supervisor_factory):
    root = shm_root
    # Periodic rescans off: only the rescan an overflow triggers can find what the kernel dropped.
    # The supervisor is stopped for a while: a generous miss_limit keeps its workers from being
    # taken for hung when it wakes.
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"rescan_interval": RESCANS_OFF},
                                                               "heartbeat": {"miss_limit": 400}})
    queue_limit = int(MAX_QUEUED.read_text())  # read, never written: the limit every new inotify instance gets
    count = queue_limit + 4000
    sup = supervisor_factory(config)
    ids = [f"flood-{i}" for i in range(count)]
    os.kill(sup.pid, signal.SIGSTOP)  # its inotify queue fills while it cannot read it
    try:
        _stage_and_rename(root, "main", ids)
        # A group made after the flood: its folder's event is dropped with the rest, so only a rescan finds it.
        late = Client(root, "late")
        late_id = late.send("late", "task", {"late": True}, requires_ack=True)
        late.close()
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    wait_until(lambda: acked(root, ids), 180, interval=0.2, message=f"all {count} acks")
    wait_until(lambda: acked(root, [late_id], "late"), 30, message="the late group's message acked")
    assert sup.log().count(OVERFLOW_LINE) >= 1, "the overflow was seen and logged"
    counts = Counter(r["id"] for r in records(tmp_path))
    assert set(counts) == {*ids, late_id}
    assert max(counts.values()) == 1, "nothing handled twice"
    assert files(root, "main", "messages") == [] and files(root, "late", "messages") == []
    assert sup.stop() == 0


@linux_only
def test_messages_queued_before_start_are_found_by_the_start_scan(tmp_path, root, supervisor_factory):
    """Guarantee 5, "watch, then scan at start": with no periodic rescan, the start scan alone finds them."""
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"rescan_interval": RESCANS_OFF}})
    with Client(root, "main") as client:
        ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(20)]
    sup = supervisor_factory(config)
    wait_until(lambda: acked(root, ids), 30, message="the queued messages acked")
    assert sorted(r["id"] for r in records(tmp_path)) == sorted(ids)
    assert sup.stop() == 0


@linux_only
def test_periodic_rescans_find_what_no_event_announced(tmp_path, root, supervisor_factory):
    """Guarantee 5, "rescan every rescan_interval".

    An operator replaces messages/ with a new folder: the inotify watch follows the
    old one (renamed away), so messages dropped into the new one raise no event the
    supervisor sees. Only a periodic rescan can find them.
    """
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"rescan_interval": 0.5}})
    sup = supervisor_factory(config)
    messages = root / "main" / "messages"
    os.rename(messages, root / "main" / "messages.old")
    messages.mkdir(mode=0o700)
    ids: list[str] = []
    with Client(root, "main") as client:
        for round_ in range(2):  # two rounds: one rescan is not "every rescan_interval"
            batch = [client.send("main", "task", {"round": round_, "n": i}, requires_ack=True) for i in range(3)]
            wait_until(lambda b=batch: acked(root, b), 30, message=f"round {round_}'s unannounced messages acked")
            ids += batch
    assert sorted(r["id"] for r in records(tmp_path)) == sorted(ids)
    assert sup.stop() == 0


@linux_only
def test_a_group_folder_made_while_running_is_watched_at_once(tmp_path, root, supervisor_factory):
    """[spool] groups: "other group folders are picked up when they appear" (by their event, rescans off)."""
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"rescan_interval": RESCANS_OFF}})
    sup = supervisor_factory(config)
    with Client(root, "newcomer") as client:
        ids = [client.send("newcomer", "task", {"n": i}, requires_ack=True) for i in range(3)]
        wait_until(lambda: acked(root, ids, "newcomer"), 30, message="the new group's messages acked")
        # and once watched, a later message is seen by its event alone
        later = client.send("newcomer", "task", {"n": "later"}, requires_ack=True)
        wait_until(lambda: acked(root, [later], "newcomer"), 30, message="a later message in the new group")
    assert "IPC watcher setup for group newcomer" in sup.log()
    assert {r["group"] for r in records(tmp_path)} == {"newcomer"}
    assert sup.stop() == 0


@linux_only
@pytest.mark.parametrize("watcher", ["native", "polling"])
def test_the_configured_watcher_is_the_one_running(tmp_path, root, supervisor_factory, watcher):
    """[spool] watcher: native reads one inotify descriptor; polling (network filesystems) holds none."""
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"watcher": watcher,
                                                                          "rescan_interval": RESCANS_OFF}})
    sup = supervisor_factory(config)
    assert inotify_instances(sup.pid) == (1 if watcher == "native" else 0)
    with Client(root, "main") as client:
        ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(50)]
    wait_until(lambda: acked(root, ids), 60, message="acks")
    assert "IPC watcher setup for group main" in sup.log()
    assert sup.stop() == 0
