"""One epoll set for the supervisor's loop, kept across iterations.

Building a selector per wait cost more than the wait. Each call names what
to wait on as ``(fd, events, role, owner)``; a registration is kept while the
same role of the same owner still asks for it with the same events, so a
reused fd number (a worker died, a new one got its fd) is registered afresh.
A dead worker's fds must be :meth:`WaitSet.forget`-ed before they are closed.
"""

from __future__ import annotations

import select
from typing import Any

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT

Waitable = tuple[int, int, str, Any]  # (fd, events, role, owner)


class WaitSet:
    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._registered: dict[int, Waitable] = {}

    def wait(self, waitables: list[Waitable], timeout: float) -> set[int]:
        """The fds that are ready (readable, writable, or at EOF / in error, as epoll reports them)."""
        if self._epoll is None:  # created lazily, in the process that waits (compat forks the supervisor)
            self._epoll = select.epoll()
        epoll, registered = self._epoll, self._registered
        wanted = {w[0]: w for w in waitables}
        for fd, (_, events, role, owner) in list(registered.items()):
            now = wanted.get(fd)
            if now is None or now[1] != events or now[2] != role or now[3] is not owner:
                del registered[fd]
                try:
                    epoll.unregister(fd)
                except OSError:  # already gone with its closed fd
                    pass
        for fd, entry in wanted.items():
            if fd not in registered:
                try:
                    epoll.register(fd, entry[1])
                except FileExistsError:
                    epoll.modify(fd, entry[1])
                registered[fd] = entry
        try:
            events = epoll.poll(timeout)
        except InterruptedError:
            return set()
        return {fd for fd, _ in events if fd in registered}

    def forget(self, owner: Any) -> None:
        """Unregister an owner's fds while they are still open.

        epoll tracks the open file, not the number: an fd closed here but
        still open in a forked child would stay registered (and report HUP
        forever) if it were not unregistered first.
        """
        for fd in [fd for fd, entry in self._registered.items() if entry[3] is owner]:
            del self._registered[fd]
            if self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def fileno(self) -> int | None:
        return self._epoll.fileno() if self._epoll is not None else None

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._registered.clear()
