"""``ipcpool reload``: SIGHUP to the supervisor that owns a root, then its verdict from status.json."""

from __future__ import annotations

import os
import signal
import time

from ipcpool.localroot import read_status
from ipcpool.ops.health import pid_alive


def ask_reload(root: str, *, timeout: float) -> tuple[bool, str]:
    """``ipcpool reload``: SIGHUP to the supervisor that owns ``root``, then its verdict (ok, what it said).

    The supervisor is found through its status.json (pid and start time, so a
    reused pid is never signalled); the verdict is the reload count moving there.
    """
    status = read_status(root)
    if status is None:
        return False, f"no supervisor status under {root}: is `ipcpool run` running on this root?"
    if status.get("state") != "running":
        return False, f"the supervisor of {root} is {status.get('state')}, not running: nothing to reload"
    owner = status.get("supervisor") or {}
    pid, born = int(owner.get("pid", 0)), owner.get("createTime")
    if not pid or not pid_alive(pid, born):
        return False, f"the supervisor of {root} (pid {pid}) is gone"
    reloads = status.get("reloads") or {}
    # A reload in progress ends first, with its own verdict; ours is the one after it.
    before = reloads.get("count", 0) + (1 if reloads.get("inProgress") else 0)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)  # another process's file: read again until it says
        reloads = (read_status(root) or {}).get("reloads") or {}
        if reloads.get("count", 0) > before and reloads.get("last"):
            last = reloads["last"]
            return bool(last["ok"]), f"reload {'took' if last['ok'] else 'failed'} (pid {pid}): {last['reason']}"
        if not pid_alive(pid, born):
            return False, f"the supervisor (pid {pid}) exited during the reload: see its log"
    return False, f"no verdict within {timeout:g}s (pid {pid}): new workers still booting? see the supervisor's log"
