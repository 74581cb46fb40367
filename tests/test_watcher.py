"""The native watcher and the sender's FileWaiter on real folders and real inotify."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from ipcpool.transport.spool.waiter import FileWaiter
from ipcpool.transport.spool.watcher import CLOSED, FILE, GROUP, LOST, InotifyWatcher

linux_only = pytest.mark.skipif(not os.path.exists("/proc/sys/fs/inotify"), reason="inotify only")


def _read_until(watcher: InotifyWatcher, predicate, timeout: float = 5.0):
    hints = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([watcher.fileno()], [], [], 0.1)
        hints += watcher.read()
        if predicate(hints):
            return hints
    raise AssertionError(f"no matching hint in {hints}")


@linux_only
def test_renames_direct_writes_new_groups_and_removed_groups_become_hints(tmp_path):
    root = tmp_path / "ipc"
    (root / "main" / "messages").mkdir(parents=True)
    (root / "main" / "tmp").mkdir()
    watcher = InotifyWatcher(str(root))
    watcher.start()
    assert watcher.watch_group("main")
    try:
        (root / "main" / "tmp" / "a.json").write_text("{}")
        os.rename(root / "main" / "tmp" / "a.json", root / "main" / "messages" / "a.json")
        assert (FILE, "main", "a.json") in _read_until(watcher, lambda h: (FILE, "main", "a.json") in h)
        with open(root / "main" / "messages" / "b.json", "w") as handle:
            handle.write("{")
        assert (CLOSED, "main", "b.json") in _read_until(watcher, lambda h: (CLOSED, "main", "b.json") in h)
        (root / "other").mkdir()
        assert (GROUP, "other", None) in _read_until(watcher, lambda h: (GROUP, "other", None) in h)
        for name in os.listdir(root / "main" / "messages"):
            os.unlink(root / "main" / "messages" / name)
        os.rmdir(root / "main" / "messages")
        assert (LOST, "main", None) in _read_until(watcher, lambda h: (LOST, "main", None) in h)
    finally:
        watcher.stop()


@linux_only
def test_watching_a_missing_group_fails_softly(tmp_path):
    watcher = InotifyWatcher(str(tmp_path))
    watcher.start()
    assert watcher.watch_group("nope") is False  # rescans still cover it
    watcher.stop()


def test_file_waiter_sees_a_file_renamed_in_later(tmp_path):
    waiter = FileWaiter()
    target_dir = tmp_path / "acks"
    target_dir.mkdir()

    def later() -> None:
        time.sleep(0.2)  # the writer in another thread, deliberately late
        (tmp_path / "x.tmp").write_text("t")
        os.rename(tmp_path / "x.tmp", target_dir / "m.ack")

    thread = threading.Thread(target=later)
    thread.start()
    started = time.monotonic()
    assert waiter.wait(str(target_dir), "m.ack", 5.0)
    assert time.monotonic() - started < 4.0
    thread.join()
    assert not waiter.wait(str(target_dir), "never.ack", 0.2)
    waiter.close()
