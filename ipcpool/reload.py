"""What a reload (SIGHUP) may change, and its record in status.json.

A reload re-reads the config file (with the command line's overrides kept)
and starts new workers on it, which import the handlers afresh; the old
workers finish what they hold and exit. Where messages live and how the
supervisor is reached are fixed for its life: a change to ``[spool]``,
``[transport]``, ``[redis]`` or ``[http]`` is refused, with the key named,
and the old pool keeps running.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from ipcpool.config import Config
from ipcpool.localroot import read_status
from ipcpool.message import now_iso
from ipcpool.ops.health import pid_alive

# Where messages live, how the supervisor is reached, and the heartbeat every worker and
# `ipcpool health` are judged by (two generations on two intervals would misjudge the old one).
RESTART_ONLY = ("spool", "transport", "redis", "http", "heartbeat")


def restart_only_change(old: Config, new: Config) -> str | None:
    """The first key a reload cannot apply, said as "[section] key: old -> new"; None when it can."""
    for section in RESTART_ONLY:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(before):
            a, b = getattr(before, f.name), getattr(after, f.name)
            if a != b:
                shown = ("(changed)", "(changed)") if section == "redis" and f.name == "url" else (a, b)
                return f"[{section}] {f.name} changed ({shown[0]!r} -> {shown[1]!r}): restart to apply it"
    return None


@dataclass
class Reload:
    """One reload in progress: the config to go back to, and the generation its new workers carry."""

    generation: int
    previous: Config
    previous_generation: int
    pool_size: int  # before the reload (SIGTTIN/SIGTTOU included): what an aborted reload goes back to


@dataclass
class ReloadLog:
    """The reloads so far, as ``ipcpool reload`` reads them from status.json."""

    count: int = 0
    succeeded: int = 0
    last: dict[str, Any] | None = None

    def record(self, ok: bool, reason: str) -> None:
        self.count += 1
        self.succeeded += ok
        self.last = {"ok": ok, "reason": reason, "at": now_iso()}

    def as_status(self, generation: int, in_progress: bool) -> dict[str, Any]:
        return {"count": self.count, "succeeded": self.succeeded, "generation": generation,
                "inProgress": in_progress, "last": self.last}


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
