"""Watching the spool: watchdog's inotify reader, or its polling observer.

Events are hints, the directory is the truth. The watcher's only job is to
turn filesystem events into cheap hints (``file``, ``closed``, ``group``,
``overflow``) and hand them to a callback that enqueues and wakes the
supervisor; the supervisor also scans at start and rescans periodically.

On Linux the native watcher registers raw callbacks on one watchdog
``InotifyFD``: one thread, one inotify descriptor for every group, and no
per-event object churn. It deliberately does not use watchdog's
``InotifyEmitter``, whose move-event grouping holds every event behind an
unpaired IN_MOVED_FROM for half a second (and every claim is one), and which
hides queue overflows. Here an overflow becomes an ``overflow`` hint, which
makes the supervisor rescan at once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

Hint = tuple[str, str | None, str | None]  # (kind, group, name)
Notify = Callable[[Hint], None]

FILE, CLOSED, GROUP, OVERFLOW, LOST = "file", "closed", "group", "overflow", "lost"


class Watcher(Protocol):
    def start(self) -> None: ...
    def watch_group(self, group: str) -> bool: ...
    def unwatch_group(self, group: str) -> None: ...
    def stop(self) -> None: ...


def make_watcher(root: str, notify: Notify, *, polling: bool, poll_interval: float = 1.0) -> Watcher:
    if not polling and sys.platform.startswith("linux"):
        return InotifyWatcher(root, notify)
    return ObserverWatcher(root, notify, polling=polling, poll_interval=poll_interval)


class _Callback:
    """A watchdog WatchCallback that turns raw inotify events into hints."""

    def __init__(self, group: str | None, notify: Notify, closed_mask: int) -> None:
        self.group = group
        self.notify = notify
        self.closed_mask = closed_mask

    def on_event(self, event: Any) -> None:
        name = os.fsdecode(event.name)
        if not name:
            return
        if self.group is None:
            self.notify((GROUP, name, None))
        elif event.mask & self.closed_mask:
            self.notify((CLOSED, self.group, name))
        else:
            self.notify((FILE, self.group, name))

    def on_watch_deleted(self, wd: int) -> None:
        self.notify((LOST, self.group, None))

    def on_queue_overflow(self) -> None:
        self.notify((OVERFLOW, None, None))


class InotifyWatcher:
    """One watchdog InotifyFD thread for the root and every group's messages/."""

    def __init__(self, root: str, notify: Notify) -> None:
        from watchdog.observers.inotify_c import InotifyConstants as IN
        from watchdog.observers.inotify_c import InotifyFD

        self.root = root
        self.notify = notify
        self._fd = InotifyFD()
        self._group_mask = IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE | IN.IN_DONT_FOLLOW | IN.IN_ONLYDIR
        self._root_mask = IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_DONT_FOLLOW | IN.IN_ONLYDIR
        self._closed = int(IN.IN_CLOSE_WRITE)
        self._watches: dict[str, int] = {}

    def start(self) -> None:
        self._fd.add_callback(os.fsencode(self.root), self._root_mask, _Callback(None, self.notify, 0), 0)
        self._fd.start()

    def watch_group(self, group: str) -> bool:
        if group in self._watches:
            return True
        path = os.fsencode(os.path.join(self.root, group, "messages"))
        try:
            wd = self._fd.add_callback(path, self._group_mask, _Callback(group, self.notify, self._closed), 1)
        except OSError as exc:
            log.warning("cannot watch group %s (%s); rescans will still find its messages", group, exc)
            return False
        self._watches[group] = wd
        log.info("IPC watcher setup for group %s", group)
        return True

    def unwatch_group(self, group: str) -> None:
        wd = self._watches.pop(group, None)
        if wd is not None:
            try:
                self._fd.remove_callbacks([(wd, 1)])
            except (OSError, KeyError):
                pass

    def stop(self) -> None:
        self._fd.stop()
        self._fd.join(timeout=2)


class _Handler(FileSystemEventHandler):
    def __init__(self, group: str | None, notify: Notify) -> None:
        self.group = group
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("created", "moved", "closed", "modified"):
            return
        path = os.fsdecode(event.dest_path or event.src_path)
        name = os.path.basename(path)
        if self.group is None:
            if event.is_directory:
                self.notify((GROUP, name, None))
        elif not event.is_directory:
            self.notify((CLOSED if event.event_type == "closed" else FILE, self.group, name))


class ObserverWatcher:
    """watchdog's Observer (or PollingObserver for network filesystems), one watch per group."""

    def __init__(self, root: str, notify: Notify, *, polling: bool, poll_interval: float) -> None:
        if polling:
            self._observer: Any = PollingObserver(timeout=poll_interval)
        else:
            from watchdog.observers import Observer

            self._observer = Observer()
        self.root = root
        self.notify = notify
        self._watches: dict[str, Any] = {}

    def start(self) -> None:
        self._observer.schedule(_Handler(None, self.notify), self.root, recursive=False)
        self._observer.start()

    def watch_group(self, group: str) -> bool:
        if group in self._watches:
            return True
        path = os.path.join(self.root, group, "messages")
        try:
            self._watches[group] = self._observer.schedule(_Handler(group, self.notify), path, recursive=False)
        except OSError as exc:
            log.warning("cannot watch group %s (%s); rescans will still find its messages", group, exc)
            return False
        log.info("IPC watcher setup for group %s", group)
        return True

    def unwatch_group(self, group: str) -> None:
        watch = self._watches.pop(group, None)
        if watch is not None:
            self._observer.unschedule(watch)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)


# -- waiting for one file (senders waiting for acks and responses) -------------------------

_IN_EVENT_HEADER = 16  # struct inotify_event: int wd, uint32 mask, cookie, len
POLL_FALLBACK = 0.5  # seconds between existence checks when no event arrives


class FileWaiter:
    """Waits for named files to appear, on one inotify descriptor shared by every wait.

    The existence check after each wake-up is the truth; events only cut the
    latency, and a slow poll covers filesystems that send none.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._wd_dirs: dict[int, str] = {}
        self._dir_wds: dict[str, int] = {}
        if sys.platform.startswith("linux"):
            from watchdog.observers.inotify_c import inotify_init

            fd = inotify_init()
            if fd >= 0:
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)
                self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def watch_dir(self, directory: str) -> None:
        if self._fd < 0 or directory in self._dir_wds:
            return
        from watchdog.observers.inotify_c import InotifyConstants as IN
        from watchdog.observers.inotify_c import inotify_add_watch

        wd = inotify_add_watch(self._fd, os.fsencode(directory),
                               IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_ONLYDIR)
        if wd >= 0:
            self._wd_dirs[wd] = directory
            self._dir_wds[directory] = wd

    def read_events(self) -> list[tuple[str, str]]:
        """(directory, name) of every pending event; never blocks."""
        found: list[tuple[str, str]] = []
        while self._fd >= 0:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            i = 0
            while i + _IN_EVENT_HEADER <= len(buf):
                wd = int.from_bytes(buf[i:i + 4], sys.byteorder, signed=True)
                length = int.from_bytes(buf[i + 12:i + 16], sys.byteorder)
                name = buf[i + 16:i + 16 + length].rstrip(b"\0")
                i += _IN_EVENT_HEADER + length
                directory = self._wd_dirs.get(wd)
                if directory is not None and name:
                    found.append((directory, os.fsdecode(name)))
        return found

    def wait(self, directory: str, name: str, timeout: float) -> bool:
        """True once ``directory/name`` exists; False when ``timeout`` seconds pass first."""
        import select
        import time

        self.watch_dir(directory)
        target = os.path.join(directory, name)
        deadline = time.monotonic() + timeout
        while True:
            if os.path.exists(target):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._fd >= 0:
                select.select([self._fd], [], [], min(remaining, POLL_FALLBACK))
                self.read_events()
            else:
                time.sleep(min(remaining, POLL_FALLBACK / 5))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
