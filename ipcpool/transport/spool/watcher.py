"""Watching the spool: inotify read directly on Linux, watchdog's observer elsewhere (FSEvents or kqueue on
macOS), or its polling observer (network filesystems).

Events are hints, the directory is the truth. The watcher's only job is to
turn filesystem events into cheap hints (``file``, ``closed``, ``group``,
``overflow``) and hand them to a callback that enqueues and wakes the
supervisor; the supervisor also scans at start and rescans periodically.

On Linux the native watcher is one inotify descriptor (through watchdog's
bindings) for the root and every group, read by the supervisor's own loop:
no thread, no per-event objects. It deliberately does not use watchdog's
``InotifyEmitter``, whose move-event grouping holds every event behind an
unpaired IN_MOVED_FROM for half a second (and every claim is one), and which
hides queue overflows. Here an overflow becomes an ``overflow`` hint, which
makes the supervisor rescan at once. The polling observer (network
filesystems) keeps watchdog's thread, which enqueues hints and wakes the loop.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
from collections.abc import Callable
from typing import Any, Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.polling import PollingObserver
from watchdog.utils import UnsupportedLibcError

log = logging.getLogger(__name__)

Hint = tuple[str, str | None, str | None]  # (kind, group, name)
Notify = Callable[[Hint], None]

FILE, CLOSED, GROUP, OVERFLOW, LOST = "file", "closed", "group", "overflow", "lost"
_IN_EVENT = struct.Struct("iIII")  # struct inotify_event: int wd; uint32 mask, cookie, len; then the name
_IN_EVENT_HEADER = _IN_EVENT.size
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsdecode's, inlined


class Watcher(Protocol):
    def fileno(self) -> int | None: ...
    def read(self) -> list[Hint]: ...
    def start(self) -> None: ...
    def watch_group(self, group: str) -> bool: ...
    def unwatch_group(self, group: str) -> None: ...
    def stop(self) -> None: ...


def make_watcher(root: str, notify: Notify, *, polling: bool, poll_interval: float = 1.0,
                 inboxes: tuple[str, ...] = ("messages",)) -> Watcher:
    """The native reader on Linux; watchdog's observers (with a thread calling ``notify``) elsewhere.

    Each group's ``inboxes`` are watched; a file in an inbox other than
    messages/ is hinted as ``<inbox>/<name>``.
    """
    if not polling and sys.platform.startswith("linux"):
        try:
            return InotifyWatcher(root, inboxes)
        except (ImportError, UnsupportedLibcError, OSError) as exc:  # no inotify here: watchdog's best
            log.info("inotify is not available (%s); watching through watchdog's observer", exc)
    return ObserverWatcher(root, notify, polling=polling, poll_interval=poll_interval, inboxes=inboxes)


def _prefix(inbox: str) -> str:
    return "" if inbox == "messages" else f"{inbox}/"


def parse_events(buf: bytes) -> list[tuple[int, int, str]]:
    """(watch descriptor, mask, name) for each ``struct inotify_event`` in ``buf``."""
    events = []
    unpack, size, end = _IN_EVENT.unpack_from, _IN_EVENT_HEADER, len(buf)
    i = 0
    while i + size <= end:
        wd, mask, _cookie, length = unpack(buf, i)
        start = i + size
        i = start + length
        events.append((wd, mask, buf[start:i].rstrip(b"\0").decode(_FS_ENCODING, _FS_ERRORS)))
    return events


class InotifyWatcher:
    """One inotify descriptor for the root and every group's messages/, read by the supervisor's loop.

    No thread: the supervisor waits on :meth:`fileno` with everything else and
    calls :meth:`read` when it is readable, so an event costs no thread
    hand-off. It uses watchdog's inotify bindings rather than its emitter,
    whose move grouping holds every event behind an unpaired IN_MOVED_FROM for
    half a second (each claim is one) and which hides queue overflows.
    """

    def __init__(self, root: str, inboxes: tuple[str, ...] = ("messages",)) -> None:
        from watchdog.observers.inotify_c import InotifyConstants as IN
        from watchdog.observers.inotify_c import inotify_init

        self.root = root
        self.inboxes = inboxes
        fd = inotify_init()
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init failed")
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self._fd = fd
        self._group_mask = IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE | IN.IN_DONT_FOLLOW | IN.IN_ONLYDIR
        self._root_mask = IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_DONT_FOLLOW | IN.IN_ONLYDIR
        self._closed_bit = int(IN.IN_CLOSE_WRITE)
        self._overflow_bit = int(IN.IN_Q_OVERFLOW)
        self._ignored_bit = int(IN.IN_IGNORED)
        self._isdir_bit = int(IN.IN_ISDIR)  # a folder made in an inbox is no message: left alone, as scans do
        self._groups: dict[int, tuple[str | None, str]] = {}  # wd -> (group or None for the root, name prefix)
        self._watches: dict[str, list[int]] = {}

    def fileno(self) -> int:
        return self._fd

    def _add_watch(self, path: str, mask: int) -> int:
        from watchdog.observers.inotify_c import inotify_add_watch

        wd = inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def start(self) -> None:
        self._groups[self._add_watch(self.root, self._root_mask)] = (None, "")

    def watch_group(self, group: str) -> bool:
        if group in self._watches:
            return True
        wds: list[int] = []
        for inbox in self.inboxes:
            try:
                wd = self._add_watch(os.path.join(self.root, group, inbox), self._group_mask)
            except OSError as exc:  # ENOSPC: the watch limit; rescans still find its messages
                log.warning("cannot watch group %s (%s); rescans will still find its messages", group, exc)
                self._remove(wds)
                return False
            wds.append(wd)
            self._groups[wd] = (group, _prefix(inbox))
        self._watches[group] = wds
        log.info("IPC watcher setup for group %s (inotify)", group)
        return True

    def unwatch_group(self, group: str) -> None:
        self._remove(self._watches.pop(group, []))

    def _remove(self, wds: list[int]) -> None:
        from watchdog.observers.inotify_c import inotify_rm_watch

        for wd in wds:
            if self._groups.pop(wd, None) is not None:
                inotify_rm_watch(self._fd, wd)

    def read(self) -> list[Hint]:
        """Every pending event as a hint; never blocks."""
        hints: list[Hint] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return hints
            for wd, mask, name in parse_events(buf):
                if mask & self._overflow_bit:
                    hints.append((OVERFLOW, None, None))
                    continue
                watched = self._groups.get(wd)
                if watched is None:
                    continue
                group, prefix = watched
                if mask & self._ignored_bit:  # the watched folder is gone
                    del self._groups[wd]
                    if group is not None:
                        self._remove(self._watches.pop(group, []))
                    hints.append((LOST, group, None))
                elif name:
                    if group is None:
                        hints.append((GROUP, name, None))
                    elif mask & self._isdir_bit:
                        continue
                    else:
                        hints.append((CLOSED if mask & self._closed_bit else FILE, group, prefix + name if prefix
                                      else name))

    def stop(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Handler(FileSystemEventHandler):
    def __init__(self, group: str | None, notify: Notify, prefix: str = "") -> None:
        self.group = group
        self.notify = notify
        self.prefix = prefix

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("created", "moved", "closed", "modified"):
            return
        path = os.fsdecode(event.dest_path or event.src_path)
        name = os.path.basename(path)
        if self.group is None:
            if event.is_directory:
                self.notify((GROUP, name, None))
        elif not event.is_directory:
            self.notify((CLOSED if event.event_type == "closed" else FILE, self.group, self.prefix + name))


class ObserverWatcher:
    """watchdog's Observer (or PollingObserver for network filesystems), one watch per group.

    Its thread calls ``notify``, which enqueues the hint and wakes the supervisor.
    """

    def fileno(self) -> None:
        return None

    def read(self) -> list[Hint]:
        return []

    def __init__(self, root: str, notify: Notify, *, polling: bool, poll_interval: float,
                 inboxes: tuple[str, ...] = ("messages",)) -> None:
        self.inboxes = inboxes
        if polling:
            self._observer: Any = PollingObserver(timeout=poll_interval)
        else:
            from watchdog.observers import Observer

            self._observer = Observer()
        self.root = root
        self.notify = notify
        self._watches: dict[str, list[Any]] = {}

    def start(self) -> None:
        self._observer.schedule(_Handler(None, self.notify), self.root, recursive=False)
        self._observer.start()

    def watch_group(self, group: str) -> bool:
        if group in self._watches:
            return True
        watches: list[Any] = []
        for inbox in self.inboxes:
            path = os.path.join(self.root, group, inbox)
            try:
                watches.append(self._observer.schedule(_Handler(group, self.notify, _prefix(inbox)), path,
                                                       recursive=False))
            except OSError as exc:
                log.warning("cannot watch group %s (%s); rescans will still find its messages", group, exc)
                for watch in watches:
                    self._observer.unschedule(watch)
                return False
        self._watches[group] = watches
        log.info("IPC watcher setup for group %s (watchdog %s)", group, type(self._observer).__name__)
        return True

    def unwatch_group(self, group: str) -> None:
        for watch in self._watches.pop(group, []):
            self._observer.unschedule(watch)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
