"""One selector for the supervisor's loop, kept across iterations: epoll on Linux, kqueue on macOS.

``selectors.DefaultSelector`` is the platform's best (poll where neither is
there). Building a selector per wait cost more than the wait. Each call names
what to wait on as ``(fd, events, role, owner)``; a registration is kept while
the same role of the same owner still asks for it with the same events, so a
reused fd number (a worker died, a new one got its fd) is registered afresh.
A dead worker's fds must be :meth:`WaitSet.forget`-ed before they are closed.
"""

from __future__ import annotations

import selectors
from typing import Any

READABLE = selectors.EVENT_READ
WRITABLE = selectors.EVENT_WRITE

Waitable = tuple[int, int, str, Any]  # (fd, events, role, owner)


class WaitSet:
    def __init__(self) -> None:
        self._selector: selectors.BaseSelector | None = None
        self._registered: dict[int, Waitable] = {}

    def wait(self, waitables: list[Waitable], timeout: float) -> set[int]:
        """The fds that are ready (readable, writable, or at EOF / in error: those count as ready too)."""
        if self._selector is None:  # created lazily, in the process that waits (compat forks the supervisor)
            self._selector = selectors.DefaultSelector()
        selector, registered = self._selector, self._registered
        wanted = {w[0]: w for w in waitables}
        for fd, (_, events, role, owner) in list(registered.items()):
            now = wanted.get(fd)
            if now is None or now[1] != events or now[2] != role or now[3] is not owner:
                del registered[fd]
                try:
                    selector.unregister(fd)
                except (KeyError, OSError, ValueError):  # already gone with its closed fd
                    pass
        for fd, entry in wanted.items():
            if fd not in registered:
                try:
                    selector.register(fd, entry[1])
                except KeyError:
                    selector.modify(fd, entry[1])
                registered[fd] = entry
        try:
            events = selector.select(timeout)
        except InterruptedError:
            return set()
        return {key.fd for key, _ in events if key.fd in registered}

    def forget(self, owner: Any) -> None:
        """Unregister an owner's fds while they are still open.

        epoll (and kqueue) track the open file, not the number: an fd closed
        here but still open in a forked child would stay registered (and report
        HUP forever) if it were not unregistered first.
        """
        for fd in [fd for fd, entry in self._registered.items() if entry[3] is owner]:
            del self._registered[fd]
            if self._selector is not None:
                try:
                    self._selector.unregister(fd)
                except (KeyError, OSError, ValueError):
                    pass

    def fileno(self) -> int | None:
        """The selector's own descriptor (epoll's, kqueue's), or None for poll, which has none."""
        fileno = getattr(self._selector, "fileno", None)
        return fileno() if fileno is not None else None

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self._registered.clear()
