"""``[[schedule]]``: messages the supervisor publishes on a timetable, once per due time (Celery beat's job).

A schedule names a group, a message type and a payload, and exactly one of ``cron`` (five fields, in its
``timezone``) or ``every`` (seconds). Each due time becomes one message whose id is derived from the
schedule's name and that due time, ``schedule-<name>-<due, UTC, ISO 8601 basic>`` (a message id allows
no ``:``): e.g. ``schedule-digest-20261202T080000Z``. That id is what makes a due time published once:

- Every supervisor computes the same due times (``every`` counts from the Unix epoch, not from a start).
- Publishing goes through the seam's :meth:`Outbox.publish_due`, which records the last due time published
  per schedule with the message, and refuses a due time at or before it. On Redis that is one script (the
  check, XADD and the record at once), so N supervisors sharing a Redis publish each due time once between
  them. On the spool (one supervisor per root: a lock) the record is ``<root>/.ipcpool/schedules.json``,
  written after the message; a supervisor SIGKILLed between the two finds the message queued, in flight
  or answered under its id at the next start, and does not publish it again (scheduled messages ask for an
  ack: the acks are the ledger, kept for ``[ack] retention``).
- A supervisor killed before it published a due time has not recorded it: the next start publishes it,
  with ``missed = "once"``.

Which due times are published: the first time a schedule is seen, its record says so (``since``); from
then on each due time after the last one recorded. Due times that passed while no supervisor ran
(before this one started) are *missed*: ``missed = "once"`` (the default, as Celery beat does) publishes
the latest of them once; ``"skip"`` publishes none. While running, the loop wakes at each due time (its
wait is bounded by :meth:`Scheduler.wait`); due times it could not reach in time (the host suspended, a
wall clock set forward) are coalesced into one message for the latest. Schedules are wall-clock: a clock
set back delays the next due time until the clock passes it again, and never publishes one twice.

The cron library is cronsim (https://github.com/cuu508/cronsim), and this is the only module that imports
it: one file, no dependencies (croniter needs python-dateutil), typed, works on zoneinfo directly, and it
handles daylight saving time as Debian's cron does, which is what its author's service (healthchecks.io)
is judged by: a job at a fixed local time that falls in the hour skipped in spring runs at the end of the
gap, a job in the repeated hour of autumn runs once; jobs with ``*`` in the minute or hour run in real
time through both. croniter went end-of-life in 2024 and was revived by pallets-eco; its DST handling
has a history of bugs (pallets-eco/croniter#25, #191). cronsim also accepts ``L``, ``W`` and ``#`` (its
extensions), which we allow. docs/schedules.md says all this for users.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cronsim import CronSim, CronSimError

from ipcpool.errors import ConfigError, InvalidMessage, QueueFull, TransportUnavailable
from ipcpool.message import GROUP_NAME, TYPE_NAME, build_envelope, encode, extension_for

log = logging.getLogger(__name__)

UTC = dt.UTC
MISSED = ("once", "skip")
KEYS = ("name", "group", "type", "payload", "cron", "every", "timezone", "missed")
SCHEDULE_NAME = GROUP_NAME  # letters, digits, '_' and '-': it goes into message ids
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
               ("day-of-week", 0, 7))
SHOWN_DUE_TIMES = 3  # what `ipcpool schedule list` and status show of each schedule's future
RETRY = 1.0  # seconds before a due time that could not be published (transport away, queue full) is tried again
ID_PREFIX = "schedule"

Fail = Callable[[str, str], ConfigError]  # (where, problem) -> the error naming the file, as config.py words it


@dataclass(frozen=True)
class ScheduleSpec:
    """One ``[[schedule]]`` table, validated. Due times are whole seconds since the epoch (UTC)."""

    name: str
    group: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    cron: str = ""
    every: int = 0
    timezone: str = "UTC"
    missed: str = "once"

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)  # zoneinfo keeps one instance per key

    def describe(self) -> str:
        return f'cron "{self.cron}" ({self.timezone})' if self.cron else f"every {self.every}s"

    # -- due times ------------------------------------------------------------------------------------------

    def next_after(self, after: float) -> int | None:
        """The first due time strictly after ``after``; None when there is none (a cron that never fires)."""
        if self.every:
            return (int(after // self.every) + 1) * self.every
        start = dt.datetime.fromtimestamp(int(after), self.tz)
        try:
            for due in CronSim(self.cron, start):
                stamp = int(due.timestamp())
                # A start in the repeated hour of autumn, in local time, may give back a time before it.
                if stamp > after:
                    return stamp
        except (StopIteration, RuntimeError):
            pass
        return None

    def latest(self, now: float, after: float) -> int | None:
        """The last due time in (``after``, ``now``]; None when there is none."""
        first = self.next_after(after)
        if first is None or first > now:
            return None
        if self.every:
            return int(now // self.every) * self.every
        # Back from now (cronsim's reverse iteration; one second past now, so a due time at now counts).
        try:
            last = int(next(CronSim(self.cron, dt.datetime.fromtimestamp(int(now) + 1, self.tz),
                                    reverse=True)).timestamp())
        except (StopIteration, RuntimeError):
            return first
        return last if first <= last <= now else first

    def upcoming(self, now: float, count: int = SHOWN_DUE_TIMES) -> list[int]:
        out: list[int] = []
        at: float = now
        while len(out) < count:
            due = self.next_after(at)
            if due is None:
                break
            out.append(due)
            at = due
        return out

    # -- its messages ---------------------------------------------------------------------------------------

    def message_id(self, due: int) -> str:
        return f"{ID_PREFIX}-{self.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(due))}"

    def envelope(self, due: int) -> dict[str, Any]:
        """The message of one due time: the same bytes whoever builds it, whenever (its timestamp is the due
        time), so a second publish of it is the same message. It asks for an ack: the acks are the ledger
        that keeps a due time from being handled twice."""
        envelope = build_envelope(self.group, self.type, self.payload, requires_ack=True,
                                  message_id=self.message_id(due))
        envelope["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(due))
        envelope["schedule"] = {"name": self.name, "due": self.local_iso(due)}  # Message.extra["schedule"]
        return envelope

    def local_iso(self, stamp: float) -> str:
        return dt.datetime.fromtimestamp(stamp, self.tz).isoformat(timespec="seconds")


# -- the config: [[schedule]] ---------------------------------------------------------------------------------


def parse_schedules(raw: Any, fail: Fail) -> tuple[ScheduleSpec, ...]:
    """The ``schedule`` array of tables of a parsed TOML document, each checked on its own.

    Errors name the table, ``[[schedule]] name="digest":``, then the key and the problem, e.g.
    ``cron "61 * * * *": minute must be 0-59``; config.py puts the file name first.
    """
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        raise fail("[[schedule]]", "must be an array of tables ([[schedule]] headers), got " + _shown(raw))
    specs: list[ScheduleSpec] = []
    seen: set[str] = set()
    for index, table in enumerate(raw, 1):
        spec = _parse_one(table, index, fail)
        if spec.name in seen:
            raise fail(_where(spec.name, index), "name is used by another [[schedule]]: names must be unique")
        seen.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def check_schedules(specs: Iterable[ScheduleSpec], config: Any, fail: Fail) -> None:
    """What a schedule must agree with elsewhere in the config: a handler for its type, its group's
    ``allowed_types``, ``[spool] strict_groups``, and ``[spool] max_message_bytes`` for its message."""
    handlers = config.handlers
    for spec in specs:
        where = _where(spec.name, 0)
        if spec.type not in handlers and "*" not in handlers:
            raise fail(where, f'type "{spec.type}" has no handler in [handlers] (and no "*"): its messages would '
                              "all go to errors/")
        allowed = config.groups[spec.group].allowed_types if spec.group in config.groups else ()
        if allowed and spec.type not in allowed:
            raise fail(where, f'type "{spec.type}" is not in [groups.{spec.group}] allowed_types')
        if config.spool.strict_groups and spec.group not in config.spool.groups:
            raise fail(where, f'group "{spec.group}" is not in [spool] groups and [spool] strict_groups is on')
        size = len(encode(spec.envelope(0), config.spool.format))
        if size > config.spool.max_message_bytes:
            raise fail(where, f"payload: its message is {size} bytes, over [spool] max_message_bytes "
                              f"({config.spool.max_message_bytes})")


def _where(name: Any, index: int) -> str:
    if isinstance(name, str) and SCHEDULE_NAME.match(name):
        return f'[[schedule]] name="{name}":'
    return f"[[schedule]] #{index}:"


def _parse_one(table: dict[str, Any], index: int, fail: Fail) -> ScheduleSpec:
    name = table.get("name")
    where = _where(name, index)
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise fail(where, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(KEYS)}")
    for key in ("name", "group", "type"):
        if key not in table:
            raise fail(where, f"{key} is missing")
        if not isinstance(table[key], str):
            raise fail(where, f"{key} must be a string, got {_shown(table[key])}")
    if not SCHEDULE_NAME.match(name):
        raise fail(where, f"name must be 1-64 letters, digits, '_' or '-' (it goes into message ids), "
                          f"got {_shown(name)}")
    if not GROUP_NAME.match(table["group"]):
        raise fail(where, f"group {_shown(table['group'])} is not a valid group name: use letters, digits, '_' "
                          "or '-'")
    if not TYPE_NAME.match(table["type"]):
        raise fail(where, f"type {_shown(table['type'])} is not a valid message type name")
    payload = table.get("payload", {})
    if not isinstance(payload, dict):
        raise fail(where, f"payload must be a table, got {_shown(payload)}")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError):
        raise fail(where, "payload must hold only strings, numbers, booleans, arrays and tables (no TOML dates, "
                          "nan or inf): it is sent as JSON") from None
    timezone = table.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise fail(where, f"timezone must be a string, got {_shown(timezone)}")
    if not _zone_exists(timezone):
        raise fail(where, f'timezone "{timezone}": not an IANA time zone name (e.g. "UTC", "Europe/Berlin")')
    missed = table.get("missed", "once")
    if missed not in MISSED:
        raise fail(where, f'missed must be "once" or "skip", got {_shown(missed)}')
    has_cron, has_every = "cron" in table, "every" in table
    if has_cron == has_every:
        raise fail(where, "needs exactly one of cron (five fields) or every (seconds)"
                   + (", not both" if has_cron else ""))
    cron, every = table.get("cron", ""), table.get("every", 0)
    if has_every and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise fail(where, f"every must be a whole number of seconds >= 1, got {_shown(every)}")
    if has_cron:
        if not isinstance(cron, str):
            raise fail(where, f"cron must be a string, got {_shown(cron)}")
        problem = cron_problem(cron, timezone)
        if problem:
            raise fail(where, f'cron "{cron}": {problem}')
    return ScheduleSpec(name=name, group=table["group"], type=table["type"], payload=payload, cron=cron,
                        every=every, timezone=timezone, missed=missed)


def _zone_exists(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def cron_problem(expr: str, timezone: str = "UTC") -> str | None:
    """What is wrong with a five-field cron expression, said of the field at fault; None when it is fine."""
    parts = expr.split()
    if len(parts) != len(CRON_FIELDS):
        return (f"must have five fields (minute hour day-of-month month day-of-week), got {len(parts)}"
                + ("; seconds are not a field here: use every" if len(parts) == 6 else ""))
    try:
        it = CronSim(expr, dt.datetime.now(zoneinfo.ZoneInfo(timezone)))
    except CronSimError as exc:
        return _field_problem(parts, str(exc))
    try:
        next(it)
    except (StopIteration, RuntimeError):
        return "is never due (no such date in the next 50 years)"
    return None


def _field_problem(parts: list[str], said: str) -> str:
    """cronsim says which field ("Bad minute"); we say what is wrong with it."""
    for text, (name, low, high) in zip(parts, CRON_FIELDS, strict=True):
        if said != f"Bad {name}":
            continue
        numbers = [int(n) for n in re.findall(r"(?<![/#\d])\d+", text)]  # not steps (/n) nor nth (#n)
        if any(not low <= n <= high for n in numbers):
            return f"{name} must be {low}-{high}"
        if name == "day-of-month" and numbers:
            return "day-of-month: no such day in the months given"
        return (f"{name} {_shown(text)} is not valid: use numbers, names (jan, mon), *, ranges a-b, lists a,b "
                "and steps /n")
    return said


def _shown(raw: Any) -> str:
    if isinstance(raw, str):
        return f'"{raw}"'
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    return repr(raw)


# -- views: `ipcpool schedule list`, status ------------------------------------------------------------------


def view(spec: ScheduleSpec, mark: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """One schedule as `schedule list --json` and `status --json` show it: its next due times and the last
    one published, in its timezone."""
    last = None
    if mark and mark.get("due") is not None:
        last = {"due": spec.local_iso(float(mark["due"])), "id": mark.get("id"),
                "at": spec.local_iso(float(mark["at"])) if mark.get("at") is not None else None}
    return {"name": spec.name, "group": spec.group, "type": spec.type,
            "cron": spec.cron or None, "every": spec.every or None, "timezone": spec.timezone, "missed": spec.missed,
            "next": [spec.local_iso(due) for due in spec.upcoming(now)], "lastPublished": last}


def views(specs: Iterable[ScheduleSpec], marks: Mapping[str, Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
    return [view(spec, marks.get(spec.name), now) for spec in specs]


# -- the supervisor's side -------------------------------------------------------------------------------------


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
