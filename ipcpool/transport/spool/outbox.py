"""The spool's sender side: publish into an inbox, and wait for the file that answers.

An answer is a file: ``acks/<id>.ack`` (handled), ``acks/<id>.nack`` (ended in
errors/, with why) or ``<own group>/responses/<id>.json`` (a request's result).
Waits share one inotify descriptor per sender (``waiter.FileWaiter``); the
asyncio flavour reads that descriptor from the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from ipcpool.errors import MessageExists, QueueFull
from ipcpool.transport.spool.layout import ACKS, MESSAGES, PROCESSING, ack_name, nack_name, root_mode
from ipcpool.transport.spool.schedules import ScheduleMarks
from ipcpool.transport.spool.spool import Spool
from ipcpool.transport.spool.waiter import POLL_FALLBACK, FileWaiter
from ipcpool.transport.spool.writes import read_regular

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a response is a handler's result: bounded, but generously

Answer = tuple[str, Any]  # ("ack", None) | ("nack", body) | ("response", body bytes)


class SpoolOutbox:
    """One sender's side of a spool root."""

    backend = "spool"

    def __init__(self, root: str | os.PathLike[str], *, durability: str = "process", mode: str | None = None,
                 max_queued: int = 0) -> None:
        self.spool = Spool(root, durability=durability, mode=mode or root_mode(root))
        self.spool.folders.ensure_root()
        self.max_queued = max_queued
        self._known_groups: set[str] = set()
        self.waiter = FileWaiter()
        self._wakeups: set[asyncio.Future[None]] = set()  # asyncio waits asleep, woken by any event
        self._loop: asyncio.AbstractEventLoop | None = None
        self.schedules = ScheduleMarks(self.spool.folders, self.spool.writer)

    @property
    def root(self) -> Any:
        return self.spool.root

    def ensure_group(self, group: str) -> None:
        if group not in self._known_groups:
            self.spool.folders.ensure_group(group)
            self._known_groups.add(group)

    def publish(self, group: str, name: str, data: bytes) -> None:
        self.ensure_group(group)
        if self.max_queued and self.spool.folders.count(group, MESSAGES) >= self.max_queued:
            raise QueueFull(group, self.max_queued)
        self.spool.writer.publish(group, name, data)

    def present(self, group: str, name: str, message_id: str) -> bool:
        """Queued, in flight or acked: checked in lifecycle order so no move slips between checks."""
        spool = self.spool
        return (os.path.exists(spool.folders.path(group, MESSAGES, name))
                or os.path.exists(spool.folders.path(group, PROCESSING, name))
                or spool.ledger.has_ack(group, message_id))

    def is_acked(self, group: str, message_id: str) -> bool:
        return self.spool.ledger.has_ack(group, message_id)

    def depth(self, group: str) -> int:
        return self.spool.folders.count(group, MESSAGES)

    def supervisor_running(self) -> bool | None:
        return self.spool.local.supervisor_running()

    def nack(self, group: str, message_id: str) -> dict[str, Any] | None:
        """The nack of that id, if there is one."""
        return _read_json(self.spool.folders.path(group, ACKS, nack_name(message_id)))

    # -- [[schedule]] (one supervisor per root: its lock makes these read-then-write steps safe) ---------------

    def schedule_marks(self, names: Sequence[str], *, since: int | None = None) -> dict[str, dict[str, Any]]:
        return self.schedules.marks(names, since)

    def publish_due(self, schedule: str, due: int, group: str, name: str, data: bytes, mark: dict[str, Any]) -> bool:
        """The message, then its record. A SIGKILL between the two leaves the message recorded nowhere but
        under its name: queued, in flight, acked or nacked (scheduled messages ask for an ack), which the
        next start finds here and does not publish again."""
        last = self.schedules.read().get(schedule, {}).get("due")
        if last is not None and last >= due:
            return False
        message_id = name.rsplit(".", 1)[0]
        published = False
        if not (self.present(group, name, message_id) or self.nack(group, message_id) is not None):
            try:
                self.publish(group, name, data)
                published = True
            except MessageExists:
                pass  # a file of that name is queued already: this due time, published before a restart
        self.schedules.record(schedule, {**mark, "due": due})
        return published

    # -- waiting for the answer -------------------------------------------------------------------------

    def _paths(self, group: str, message_id: str, reply_group: str | None) -> tuple[str, str]:
        first = (self.spool.ledger.response_path(reply_group, message_id) if reply_group is not None
                 else self.spool.folders.path(group, ACKS, ack_name(message_id)))
        return first, self.spool.folders.path(group, ACKS, nack_name(message_id))

    def wait_answer(self, group: str, message_id: str, timeout: float, accept_nack: Callable[[dict[str, Any]], bool],
                    *, reply_group: str | None = None) -> Answer | None:
        """The ack (or, with ``reply_group``, the response) or a nack ``accept_nack`` takes; None after timeout."""
        first, nack = self._paths(group, message_id, reply_group)
        found = self.waiter.wait_for([first, nack], timeout, accept=_accepting(first, accept_nack))
        return self._answer(found, first, message_id, reply_group)

    async def async_wait_answer(self, group: str, message_id: str, timeout: float,
                                accept_nack: Callable[[dict[str, Any]], bool], *,
                                reply_group: str | None = None) -> Answer | None:
        """:meth:`wait_answer` as a coroutine: every wait shares the one descriptor, read by the loop."""
        first, nack = self._paths(group, message_id, reply_group)
        paths, accept = [first, nack], _accepting(first, accept_nack)
        loop = asyncio.get_running_loop()
        waiter = self.waiter
        if self._loop is not loop and waiter.fileno() >= 0:
            loop.add_reader(waiter.fileno(), self._on_readable)
            self._loop = loop
        directories = {os.path.dirname(path) for path in paths}
        waiter.watch_dirs(directories)
        try:
            deadline = loop.time() + timeout
            while True:
                for path in paths:
                    if os.path.exists(path) and accept(path):
                        return self._answer(path, first, message_id, reply_group)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                future: asyncio.Future[None] = loop.create_future()
                self._wakeups.add(future)
                try:
                    await asyncio.wait_for(future, min(remaining, POLL_FALLBACK))
                except TimeoutError:
                    pass
                finally:
                    self._wakeups.discard(future)  # a wait that timed out is forgotten
        finally:
            waiter.unwatch_dirs(directories)

    def _on_readable(self) -> None:
        self.waiter.read_events()
        for future in self._wakeups:
            if not future.done():
                future.set_result(None)

    def _answer(self, found: str | None, first: str, message_id: str, reply_group: str | None) -> Answer | None:
        if found is None:
            return None
        if found != first:
            return "nack", _read_json(found) or {}
        if reply_group is None:
            return "ack", None
        return "response", self._take_response(found)

    @staticmethod
    def _take_response(path: str) -> bytes:
        body = read_regular(path, MAX_ANSWER_BYTES) or b""
        try:
            os.unlink(path)
        except OSError:
            pass  # shared mode: left for the supervisor's pruning
        return body

    def close(self) -> None:
        if self._loop is not None and self.waiter.fileno() >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(self.waiter.fileno())
        self.waiter.close()


def _accepting(first: str, accept_nack: Callable[[dict[str, Any]], bool]) -> Callable[[str], bool]:
    def accept(path: str) -> bool:
        if path == first:
            return True
        body = _read_json(path)
        return body is not None and accept_nack(body)

    return accept


def _read_json(path: str) -> dict[str, Any] | None:
    data = read_regular(path, MAX_ANSWER_BYTES)
    try:
        body = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
