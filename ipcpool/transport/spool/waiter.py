"""Waiting for files to appear (senders waiting for acks, nacks and responses), on inotify.

The existence check after each wake-up is the truth; events only cut the
latency, and a slow poll covers filesystems that send none.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence

from watchdog.utils import UnsupportedLibcError

from ipcpool.transport.spool.watcher import parse_events

# -- waiting for files (senders waiting for acks, nacks and responses) -------------------------

POLL_FALLBACK = 0.5  # seconds between existence checks when no event arrives


class FileWaiter:
    """Waits for named files to appear, on one inotify descriptor shared by every wait and thread.

    The existence check after each wake-up is the truth; events only cut the
    latency, and a slow poll covers filesystems that send none. Threads share
    the descriptor without serialising their waits: one reads events while
    the others sleep on a condition it signals. A folder is watched while
    some wait needs it, and its watch removed after the last one.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._wd_dirs: dict[int, str] = {}
        self._dir_wds: dict[str, int] = {}
        self._users: dict[str, int] = {}  # folder -> waits using its watch
        self._cond = threading.Condition()
        self._reading = False  # one thread reads the descriptor at a time; the others wait
        self._generation = 0  # bumped after each read, so followers know to look again
        if sys.platform.startswith("linux"):
            try:
                from watchdog.observers.inotify_c import inotify_init
            except (ImportError, UnsupportedLibcError):  # no inotify here: the existence checks poll
                return
            fd = inotify_init()
            if fd >= 0:
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)
                self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def watch_dirs(self, directories: set[str]) -> None:
        """Start (or share) a watch on each folder; pair with :meth:`unwatch_dirs`."""
        with self._cond:
            for directory in directories:
                self._users[directory] = self._users.get(directory, 0) + 1
                if self._fd < 0 or directory in self._dir_wds:
                    continue
                from watchdog.observers.inotify_c import InotifyConstants as IN
                from watchdog.observers.inotify_c import inotify_add_watch

                wd = inotify_add_watch(self._fd, os.fsencode(directory),
                                       IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_ONLYDIR)
                if wd >= 0:
                    self._wd_dirs[wd] = directory
                    self._dir_wds[directory] = wd

    def unwatch_dirs(self, directories: set[str]) -> None:
        with self._cond:
            for directory in directories:
                users = self._users.get(directory, 0) - 1
                if users > 0:
                    self._users[directory] = users
                    continue
                self._users.pop(directory, None)
                wd = self._dir_wds.pop(directory, None)
                if wd is not None and self._fd >= 0:
                    from watchdog.observers.inotify_c import inotify_rm_watch

                    self._wd_dirs.pop(wd, None)
                    inotify_rm_watch(self._fd, wd)

    def read_events(self) -> list[tuple[str, str]]:
        """(directory, name) of every pending event; never blocks."""
        found: list[tuple[str, str]] = []
        while self._fd >= 0:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            for wd, _mask, name in parse_events(buf):
                directory = self._wd_dirs.get(wd)
                if directory is not None and name:
                    found.append((directory, name))
        return found

    def wait_for(self, paths: Sequence[str], timeout: float,
                 accept: Callable[[str], bool] | None = None) -> str | None:
        """The first of ``paths`` that exists (and that ``accept`` takes, when given), or None after
        ``timeout`` seconds. ``accept`` lets a caller pass over a file that is there but not its
        answer (an older nack of the same id), waiting for it to be replaced."""
        directories = {os.path.dirname(path) for path in paths}
        self.watch_dirs(directories)
        try:
            deadline = time.monotonic() + timeout
            while True:
                for path in paths:
                    if os.path.exists(path) and (accept is None or accept(path)):
                        return path
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._await_events(min(remaining, POLL_FALLBACK))
        finally:
            self.unwatch_dirs(directories)

    def wait(self, directory: str, name: str, timeout: float) -> bool:
        """True once ``directory/name`` exists; False when ``timeout`` seconds pass first."""
        return self.wait_for([os.path.join(directory, name)], timeout) is not None

    def _await_events(self, timeout: float) -> None:
        """Until some event arrives (read by this thread or another) or ``timeout`` passes."""
        if self._fd < 0:
            time.sleep(min(timeout, POLL_FALLBACK / 5))
            return
        with self._cond:
            if self._reading:
                generation = self._generation
                self._cond.wait_for(lambda: self._generation != generation, timeout)
                return
            self._reading = True
        try:
            select.select([self._fd], [], [], timeout)
            self.read_events()
        finally:
            with self._cond:
                self._reading = False
                self._generation += 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._wd_dirs.clear()
            self._dir_wds.clear()
