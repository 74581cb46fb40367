"""The supervisor's timetable: each ``[[schedule]]``'s due times, published once each through the seam's Outbox.

The rules (ids, what is missed, why a due time is published once) are
:mod:`ipcpool.schedule`'s docstring; this is the part the supervisor's loop
owns: :meth:`Scheduler.publish_due` from its timers, :meth:`Scheduler.wait`
bounds its wait by the next due time, :meth:`Scheduler.view` goes into its
status.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ipcpool.errors import InvalidMessage, QueueFull, TransportUnavailable
from ipcpool.message import encode, extension_for
from ipcpool.schedule import ScheduleSpec, view

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds before a due time that could not be published (transport away, queue full) is tried again

@dataclass
class _State:
    anchor: float  # due times after this one are still to publish
    next: int | None  # the first of them (None: never again)
    last: dict[str, Any] | None = None  # the last due time published, as this supervisor knows it


class Scheduler:
    """The supervisor's timetable: publishes each due time of each ``[[schedule]]`` through the seam's Outbox.

    Owned by the supervisor's loop: :meth:`publish_due` from its timers, :meth:`wait` bounds its wait by the
    next due time, :meth:`view` goes into its status. ``make_outbox`` is the seam's factory
    (``ipcpool.transport.make_outbox``: this module is vocabulary below the seam and imports no transport);
    nothing is built (no Outbox, no connection) until a schedule is due. Due times before ``started`` (this
    supervisor's start) are the missed ones.
    """

    def __init__(self, config: Any, make_outbox: Callable[[Any], Any], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.started = clock()
        self._make_outbox = make_outbox
        self._outbox: Any = None
        self._specs: tuple[ScheduleSpec, ...] = ()
        self._state: dict[str, _State] = {}
        self._fresh: set[str] = set()  # new or changed by a reload: from now on, nothing to catch up
        self._unloaded = True
        self._retry_at = 0.0
        self._warned: set[tuple[str, int]] = set()
        self._zero_wait_for: float | None = None
        self.configure(config.schedules)

    def configure(self, specs: tuple[ScheduleSpec, ...]) -> None:
        """The schedules to keep (a reload's config): unchanged ones keep their place; new or changed ones
        start from now."""
        if specs == self._specs:
            return
        old = {spec.name: spec for spec in self._specs}
        self._fresh |= {spec.name for spec in specs if spec.name in old and old[spec.name] != spec}
        if self._specs:
            self._fresh |= {spec.name for spec in specs if spec.name not in old}
        for name in {spec.name for spec in self._specs} - {spec.name for spec in specs}:
            self._state.pop(name, None)
        self._specs = specs
        self._unloaded = True

    def next_due(self) -> float | None:
        """The wall-clock time of the next due time (or retry) of any schedule; None: nothing scheduled."""
        if not self._specs:
            return None
        if self._unloaded or self._retry_at:
            return self._retry_at
        dues = [state.next for state in self._state.values() if state.next is not None]
        return float(min(dues)) if dues else None

    def wait(self, longest: float) -> float:
        """How long the supervisor's loop may wait: ``longest``, or less when a due time comes first.

        A due time already past gets one wait of 0 (the loop's timers publish it right after); asked again for
        the same one, the loop is not publishing now (a drain, a retry pending): ``longest``, never a spin."""
        due = self.next_due()
        if due is None:
            return longest
        remaining = due - self.clock()
        if remaining > 0:
            return min(longest, remaining)
        if self._zero_wait_for == due:
            return longest
        self._zero_wait_for = due
        return 0.0

    def publish_due(self, now: float, specs: tuple[ScheduleSpec, ...] | None = None) -> list[str]:
        """Publish what is due at wall-clock ``now``: the ids this call published. Never raises for a
        transport that is away or a full queue: logged, and tried again in a second."""
        if specs is not None:
            self.configure(specs)
        due_at = self.next_due()
        if due_at is None or now < due_at:
            return []
        self._retry_at = 0.0
        try:
            if self._unloaded:
                self._load(now)
            return [message_id for spec in self._specs for message_id in self._publish(spec, now)]
        except (TransportUnavailable, OSError, QueueFull) as exc:
            self._retry_at = now + RETRY
            key = (type(exc).__name__, 0)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("schedules: cannot publish now, trying again every %gs: %s", RETRY, exc)
            return []

    def _load(self, now: float) -> None:
        """Where each schedule stands: its record (first sight recorded, so a due time lost to a SIGKILL before
        the first publish is still published at the next start)."""
        todo = [spec for spec in self._specs if spec.name not in self._state or spec.name in self._fresh]
        marks = self.outbox.schedule_marks([spec.name for spec in todo], since=int(now)) if todo else {}
        for spec in todo:
            mark = marks.get(spec.name) or {}
            anchor = mark.get("due", mark.get("since", now))
            if spec.name in self._fresh:
                anchor = max(anchor, now)
            last = ({"due": mark["due"], "id": mark.get("id"), "at": mark.get("at")} if "due" in mark
                    else None)
            self._state[spec.name] = _State(float(anchor), spec.next_after(anchor), last)
        self._fresh.clear()
        self._unloaded = False

    def _publish(self, spec: ScheduleSpec, now: float) -> list[str]:
        """Due times missed while no supervisor ran (at or before ``started``) first: the latest of them once,
        or none; then the latest one since (one per due time while the loop keeps up)."""
        state = self._state[spec.name]
        out: list[str] = []
        if state.next is not None and state.next <= min(now, self.started):
            due = spec.latest(min(now, self.started), state.anchor)
            if due is not None and spec.missed == "skip":
                log.info("schedule %s: skipped due times missed while no supervisor ran (the latest %s)", spec.name,
                         spec.local_iso(due))
                self._advance(state, spec, due)
            elif due is not None:
                out += self._send(spec, state, due, missed=True)
        if state.next is not None and state.next <= now:
            due = spec.latest(now, state.anchor)
            if due is not None:
                out += self._send(spec, state, due)
        return out

    def _send(self, spec: ScheduleSpec, state: _State, due: int, *, missed: bool = False) -> list[str]:
        message_id = spec.message_id(due)
        data = encode(spec.envelope(due), self.config.spool.format)
        name = message_id + extension_for(self.config.spool.format)
        at = round(self.clock(), 3)
        try:
            published = self.outbox.publish_due(spec.name, due, spec.group, name, data, {"id": message_id, "at": at})
        except InvalidMessage as exc:  # not for want of trying: say so once per due time, go on
            log.error("schedule %s: due time %s not published: %s", spec.name, spec.local_iso(due), exc)
            published = False
        except QueueFull as exc:
            if (spec.name, due) not in self._warned:
                self._warned.add((spec.name, due))
                log.warning("schedule %s: due time %s waits: %s", spec.name, spec.local_iso(due), exc)
            raise
        self._advance(state, spec, due)
        if published:
            state.last = {"due": due, "id": message_id, "at": at}
            log.info("schedule %s published id=%s group=%s type=%s due=%s%s", spec.name, message_id, spec.group,
                     spec.type, spec.local_iso(due),
                     " (the latest due time missed while no supervisor ran)" if missed else "")
            return [message_id]
        log.debug("schedule %s: due time %s was published already", spec.name, spec.local_iso(due))
        if not state.last or state.last["due"] < due:
            state.last = {"due": due, "id": message_id, "at": None}
        return []

    @staticmethod
    def _advance(state: _State, spec: ScheduleSpec, due: int) -> None:
        state.anchor = float(due)
        state.next = spec.next_after(due)

    @property
    def outbox(self) -> Any:
        if self._outbox is None:
            # The loop never waits out an outage (a sender's outbox retries for [redis] outage_timeout): one try,
            # and a due time that could not be published is tried again in RETRY.
            redis = getattr(self.config, "redis", None)
            config = self.config if redis is None else dataclasses.replace(
                self.config, redis=dataclasses.replace(redis, outage_timeout=0.0))
            self._outbox = self._make_outbox(config)
        return self._outbox

    def view(self, now: float) -> tuple[dict[str, Any], ...]:
        """What this supervisor knows of each schedule, for its status (no round trip to the transport)."""
        return tuple(view(spec, self._state[spec.name].last if spec.name in self._state else None, now)
                     for spec in self._specs)

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
