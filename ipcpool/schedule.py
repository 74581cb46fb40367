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
wait is bounded by the next: :mod:`ipcpool.pool.scheduler`); due times it could not reach in time (the
host suspended, a wall clock set forward) are coalesced into one message for the latest. Schedules are
wall-clock: a clock set back delays the next due time until the clock passes it again, and never publishes
one twice.

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

from ipcpool.errors import ConfigError, shown
from ipcpool.message import GROUP_NAME, TYPE_NAME, build_envelope, encode

log = logging.getLogger(__name__)

UTC = dt.UTC
MISSED = ("once", "skip")
KEYS = ("name", "group", "type", "payload", "cron", "every", "timezone", "missed")
SCHEDULE_NAME = GROUP_NAME  # letters, digits, '_' and '-': it goes into message ids
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
               ("day-of-week", 0, 7))
SHOWN_DUE_TIMES = 3  # what `ipcpool schedule list` and status show of each schedule's future
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
        raise fail("[[schedule]]", "must be an array of tables ([[schedule]] headers), got " + shown(raw))
    specs: list[ScheduleSpec] = []
    seen: set[str] = set()
    for index, table in enumerate(raw, 1):
        spec = _parse_one(table, index, fail)
        if spec.name.casefold() in seen:  # names become file names: one folder on a Mac ignores case
            raise fail(_where(spec.name, index), "name is used by another [[schedule]] (names must be unique, "
                       "whatever their case)")
        seen.add(spec.name.casefold())
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
            raise fail(where, f"{key} must be a string, got {shown(table[key])}")
    if not SCHEDULE_NAME.match(name):
        raise fail(where, f"name must be 1-64 letters, digits, '_' or '-' (it goes into message ids), "
                          f"got {shown(name)}")
    if not GROUP_NAME.match(table["group"]):
        raise fail(where, f"group {shown(table['group'])} is not a valid group name: use letters, digits, '_' "
                          "or '-'")
    if not TYPE_NAME.match(table["type"]):
        raise fail(where, f"type {shown(table['type'])} is not a valid message type name")
    payload = table.get("payload", {})
    if not isinstance(payload, dict):
        raise fail(where, f"payload must be a table, got {shown(payload)}")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError):
        raise fail(where, "payload must hold only strings, numbers, booleans, arrays and tables (no TOML dates, "
                          "nan or inf): it is sent as JSON") from None
    timezone = table.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise fail(where, f"timezone must be a string, got {shown(timezone)}")
    if not _zone_exists(timezone):
        raise fail(where, f'timezone "{timezone}": not an IANA time zone name (e.g. "UTC", "Europe/Berlin")')
    missed = table.get("missed", "once")
    if missed not in MISSED:
        raise fail(where, f'missed must be "once" or "skip", got {shown(missed)}')
    has_cron, has_every = "cron" in table, "every" in table
    if has_cron == has_every:
        raise fail(where, "needs exactly one of cron (five fields) or every (seconds)"
                   + (", not both" if has_cron else ""))
    cron, every = table.get("cron", ""), table.get("every", 0)
    if has_every and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise fail(where, f"every must be a whole number of seconds >= 1, got {shown(every)}")
    if has_cron:
        if not isinstance(cron, str):
            raise fail(where, f"cron must be a string, got {shown(cron)}")
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
        return (f"{name} {shown(text)} is not valid: use numbers, names (jan, mon), *, ranges a-b, lists a,b "
                "and steps /n")
    return said


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
