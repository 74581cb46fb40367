"""The portable run's premise: with ``tests/portable`` on PYTHONPATH, a Python process lacks what macOS lacks,
and ipcpool takes each fallback (``ipcpool.portable``). ``.ci/run`` then runs the end-to-end flows that way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PORTABLE = Path(__file__).resolve().parent / "portable"

PROBE = """
import json, os, select, selectors, signal, fcntl, tempfile
from ipcpool import portable
from ipcpool.localroot import LocalRoot
from ipcpool.transport.spool.reads import _F_SETLEASE
from ipcpool.transport.spool.waiter import FileWaiter
from ipcpool.transport.spool.watcher import make_watcher
from ipcpool.waitset import WaitSet
root = tempfile.mkdtemp()
waitset = WaitSet()
waitset.wait([], 0)
r, w = portable.pipe()
print(json.dumps({
    "epoll": hasattr(select, "epoll"), "pipe2": hasattr(os, "pipe2"), "pidfd": hasattr(os, "pidfd_open"),
    "lease": _F_SETLEASE is not None, "noreplace": portable._NOREPLACE is not None,
    "pidfd_open": portable.pidfd_open(os.getpid()), "locks": portable.flock_holders(1, 1),
    "boot_id": portable.boot_id(), "selector": type(waitset._selector).__name__,
    "watcher": type(make_watcher(root, lambda h: None, polling=False)).__name__,
    "waiter_fd": FileWaiter().fileno(), "pipe_nonblocking": not os.get_blocking(r) and not os.get_blocking(w),
    "has_open": portable.has_open(os.getpid(), 1, 1), "running": LocalRoot(root).supervisor_running(),
}))
"""


def _probe(*pythonpath: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (*pythonpath, Path(__file__).parent.parent)))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60,
                         cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_without_linux_interfaces_every_fallback_is_taken():
    seen = _probe(PORTABLE)
    assert seen == {
        "epoll": False, "pipe2": False, "pidfd": False, "lease": False, "noreplace": False, "pidfd_open": None,
        "locks": None, "boot_id": None, "selector": "PollSelector", "watcher": "ObserverWatcher", "waiter_fd": -1,
        "pipe_nonblocking": True, "has_open": None, "running": False,
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preferred interfaces are Linux's")
def test_on_linux_the_preferred_interfaces_are_taken():
    seen = _probe()
    assert seen["epoll"] and seen["pipe2"] and seen["noreplace"] and seen["locks"] == []
    assert seen["selector"] == "EpollSelector" and seen["watcher"] == "InotifyWatcher" and seen["waiter_fd"] >= 0
