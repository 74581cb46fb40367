"""Workers of a supervisor that is gone: wait for them, and, past a grace, kill those proven to be ours.

Every worker holds ``<root>/.ipcpool/workers.lock`` shared for its life. A
new supervisor waits until it can take the lock exclusively, so a message an
old worker still runs is never handed to a new one. A worker that
outlived its supervisor finishes the message it runs first. Killing is the
last resort, and only of processes proven to hold that very lock (``/proc``), or,
where ``/proc`` cannot be read, recorded by the previous supervisor with the
same start time: never a stranger that reused a pid.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable

from ipcpool import portable
from ipcpool.localroot import LocalRoot
from ipcpool.ops.health import pid_alive, process_stopped
from ipcpool.portable import flock_holders

log = logging.getLogger(__name__)

POLL = 0.05  # seconds between two tries of the lock


def wait_for_old_workers(local: LocalRoot, interval: float, handler_timeout: float, *,
                         interrupted: Callable[[], bool], still_starting: Callable[[], None]) -> None:
    """Return once no worker of an earlier supervisor holds workers.lock (or a signal came: ``interrupted``).

    A worker whose supervisor was SIGKILLed finishes the message it runs, then exits (so that message is not
    run twice): it is given up to ``handler_timeout``. One that cannot run (stopped) is killed after a
    short grace; any still there after the long wait is killed too; then start-up goes on regardless, so a
    lock leaked into some unrelated process can delay a restart but never block it. ``still_starting`` is
    called every ``interval`` (status.json says "starting", so senders keep waiting).
    """
    fd = os.open(local.workers_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    grace = 2 * interval + 1.0
    stuck_at = time.monotonic() + grace  # holders that cannot run are killed then
    every_at = stuck_at + handler_timeout  # any holder still there is killed then
    next_status = time.monotonic() + interval
    told: set[int] = set()
    killed_all = False
    try:
        while not interrupted():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now > every_at:
                if killed_all:
                    log.warning("workers.lock is still held; starting anyway")
                    return
                _kill_holders(fd, local, lambda _pid: True)
                killed_all = True
                every_at = now + grace
            elif now > stuck_at:
                for pid in _kill_holders(fd, local, process_stopped, spared=told):
                    told.add(pid)
                    log.info("a previous supervisor's worker pid=%d still runs a message; waiting for it to "
                             "finish (up to handler_timeout %gs)", pid, handler_timeout)
            if now >= next_status:
                next_status = now + interval
                still_starting()
            time.sleep(POLL)  # a lock has no descriptor to wait on; 20 tries a second, only at start
    finally:
        os.close(fd)


def _kill_holders(fd: int, local: LocalRoot, which: Callable[[int], bool], spared: set[int] | None = None
                  ) -> list[int]:
    """Kill the proven holders ``which`` picks; returns the holders it spared (not yet in ``spared``)."""
    holders = lock_holders(fd)
    recorded = local.recorded_workers()
    chosen = [pid for pid in dict.fromkeys([*holders, *recorded]) if which(pid)]
    for pid in kill_lock_holders(fd, [p for p in holders if p in chosen],
                                 {p: t for p, t in recorded.items() if p in chosen}):
        log.warning("killed orphaned worker pid=%d of a previous supervisor", pid)
    return [pid for pid in dict.fromkeys([*holders, *recorded])
            if pid not in chosen and pid_alive(pid, recorded.get(pid)) and pid not in (spared or set())]


def lock_holders(fd: int) -> list[int]:
    """Other pids that /proc/locks lists as holding a flock on the file open as ``fd`` (Linux; [] elsewhere).

    Candidates only: see :func:`kill_lock_holders` before signalling any of them.
    """
    st = os.fstat(fd)
    return [pid for pid in flock_holders(st.st_dev, st.st_ino) or [] if pid != os.getpid()]


def kill_lock_holders(fd: int, candidates: list[int], recorded: dict[int, float] | None = None) -> list[int]:
    """SIGKILL those of ``candidates`` and of ``recorded`` (pid -> start time: the workers a previous
    supervisor recorded) that hold the file open as ``fd``; returns whom.

    Never kills a stranger: a pid may have been reused since. Each one is pinned
    with a pidfd where there are pidfds, then proven to be the holder: it has our
    lock file open (``/proc``), or, where that cannot be read, it is a recorded
    worker with the start time recorded. The signal goes through the pidfd, so it
    reaches the process that was checked or nobody; without pidfds it goes by pid
    right after the check.
    """
    st = os.fstat(fd)
    recorded = recorded or {}
    killed: list[int] = []
    for pid in dict.fromkeys([*candidates, *recorded]):
        if pid == os.getpid():
            continue
        pidfd = portable.pidfd_open(pid)
        try:
            proven = portable.has_open(pid, st.st_dev, st.st_ino)
            if proven is None:  # no /proc here: the record of who our workers were is the proof
                proven = pid in recorded and pid_alive(pid, recorded[pid])
            if not proven:
                continue
            if pidfd is not None:
                portable.pidfd_signal(pidfd, signal.SIGKILL)
            elif pid_alive(pid, recorded.get(pid)):
                os.kill(pid, signal.SIGKILL)
            else:
                continue
            killed.append(pid)
        except ProcessLookupError:
            pass
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return killed
