"""[[schedule]]: due times (cron in a timezone across DST, every N seconds), the config's errors, and real
supervisors publishing each due time once: across a SIGKILL and restart (missed = "once" and "skip"), and with
three supervisors sharing one Redis. ``schedule list`` and ``status --json`` show what was published."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import time
import zoneinfo
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import SupervisorProcess, records, run_cli, wait_until, write_config

from ipcpool.config import load_config, parse_config
from ipcpool.errors import ConfigError
from ipcpool.pool.scheduler import Scheduler
from ipcpool.schedule import ScheduleSpec
from ipcpool.transport.memory import MemoryBroker, MemoryOutbox

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def _at(text: str) -> int:
    """A local Berlin time ("2026-03-29 03:00") as seconds since the epoch."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp())


def _local(stamp: int) -> str:
    return dt.datetime.fromtimestamp(stamp, BERLIN).isoformat(timespec="minutes")


def _config(*schedules: dict[str, Any], **sections: dict[str, Any]) -> Any:
    return parse_config({"handlers": {"tick": "recorder:record", "report": "recorder:record"}, **sections,
                         "schedule": list(schedules)}, "my.toml")


# -- the config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "said"), [
    ({"cron": "61 * * * *"}, 'cron "61 * * * *": minute must be 0-59'),
    ({"cron": "0 24 * * *"}, 'cron "0 24 * * *": hour must be 0-23'),
    ({"cron": "0 9 * 13 *"}, 'cron "0 9 * 13 *": month must be 1-12'),
    ({"cron": "0 9 * *"}, 'cron "0 9 * *": must have five fields'),
    ({"cron": "0 9 30 2 *"}, 'cron "0 9 30 2 *": day-of-month: no such day in the months given'),
    ({"cron": "0 9 * * fri-mon"}, 'cron "0 9 * * fri-mon": day-of-week "fri-mon" is not valid'),
    ({"every": 0}, "every must be a whole number of seconds >= 1, got 0"),
    ({"every": 1.5}, "every must be a whole number of seconds >= 1, got 1.5"),
    ({"every": 1, "cron": "* * * * *"}, "needs exactly one of cron (five fields) or every (seconds), not both"),
    ({}, "needs exactly one of cron (five fields) or every (seconds)"),
    ({"every": 1, "timezone": "Europe/Atlantis"}, 'timezone "Europe/Atlantis": not an IANA time zone name'),
    ({"every": 1, "missed": "all"}, 'missed must be "once" or "skip", got "all"'),
    ({"every": 1, "payload": "x"}, 'payload must be a table, got "x"'),
    ({"every": 1, "payload": {"when": dt.date(2026, 1, 1)}}, "payload must hold only strings, numbers"),
    ({"every": 1, "type": "nobody"}, 'type "nobody" has no handler in [handlers]'),
    ({"every": 1, "colour": "red"}, "unknown key 'colour'; allowed keys: name, group, type, payload, cron, every"),
])
def test_a_bad_schedule_is_refused_naming_the_file_the_schedule_and_the_problem(table, said):
    with pytest.raises(ConfigError) as caught:
        _config({"name": "digest", "group": "main", "type": "tick", **table})
    assert str(caught.value).startswith(f'my.toml: [[schedule]] name="digest": {said}'), str(caught.value)


def test_names_are_unique_and_required():
    one = {"name": "digest", "group": "main", "type": "tick", "every": 60}
    with pytest.raises(ConfigError, match=r'\[\[schedule\]\] name="digest": name is used by another'):
        _config(one, one)
    with pytest.raises(ConfigError, match=r'\[\[schedule\]\] name="Digest": name is used by another'):
        _config(one, dict(one, name="Digest"))  # one file name on a case-insensitive filesystem (a Mac's)
    with pytest.raises(ConfigError, match=r"\[\[schedule\]\] #1: name is missing"):
        _config({"group": "main", "type": "tick", "every": 60})
    with pytest.raises(ConfigError, match=r"\[\[schedule\]\] #1: name must be 1-64 letters"):
        _config({"name": "a:b", "group": "main", "type": "tick", "every": 60})


def test_defaults_and_a_valid_table():
    (spec,) = _config({"name": "digest", "group": "main", "type": "report", "cron": "0 9 * * mon-fri",
                       "timezone": "Europe/Berlin", "payload": {"to": ["ops"]}}).schedules
    assert (spec.missed, spec.every, spec.payload) == ("once", 0, {"to": ["ops"]})
    (spec,) = _config({"name": "tick", "group": "main", "type": "tick", "every": 5}).schedules
    assert (spec.timezone, spec.missed, spec.payload, spec.cron) == ("UTC", "once", {}, "")


# -- due times -------------------------------------------------------------------------------------------------


def test_every_counts_from_the_epoch_so_every_supervisor_agrees():
    spec = ScheduleSpec("t", "main", "tick", every=60, timezone="Europe/Berlin")
    assert spec.next_after(120) == 180 and spec.next_after(179.9) == 180 and spec.next_after(180) == 240
    assert spec.latest(now=1000, after=100) == 960
    assert spec.latest(now=1000, after=960) is None
    assert spec.upcoming(61) == [120, 180, 240]
    assert spec.message_id(1796547059) == "schedule-t-20261206T085059Z"


def test_cron_in_a_timezone_keeps_local_time_through_both_dst_changes():
    spring = ScheduleSpec("d", "main", "tick", cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: 02:00 becomes 03:00, so 02:30 never happens: the job runs at the end of the gap, once.
    dues = spring.upcoming(_at("2026-03-28T12:00"))
    assert [_local(d) for d in dues] == ["2026-03-29T03:00+02:00", "2026-03-30T02:30+02:00",
                                         "2026-03-31T02:30+02:00"]
    # 2026-10-25: 03:00 becomes 02:00 again, so 02:30 happens twice: the job runs once, at the first.
    dues = spring.upcoming(_at("2026-10-24T12:00"))
    assert [_local(d) for d in dues] == ["2026-10-25T02:30+02:00", "2026-10-26T02:30+01:00",
                                         "2026-10-27T02:30+01:00"]
    assert dues[1] - dues[0] == 25 * 3600
    # A job with * in the hour runs in real time: each of the two 02:00s once.
    hourly = ScheduleSpec("h", "main", "tick", cron="0 * * * *", timezone="Europe/Berlin")
    dues = hourly.upcoming(_at("2026-10-25T00:30"), count=4)
    assert [_local(d) for d in dues] == ["2026-10-25T01:00+02:00", "2026-10-25T02:00+02:00",
                                         "2026-10-25T02:00+01:00", "2026-10-25T03:00+01:00"]
    assert len(set(dues)) == 4


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *", "*/20 1-3 * * *", "15 2 25 10 *"])
def test_the_latest_due_time_is_the_last_one_counting_forward(cron):
    """``latest`` (after downtime: back from now) agrees with counting forward, across both DST changes."""
    spec = ScheduleSpec("d", "main", "tick", cron=cron, timezone="Europe/Berlin")
    for day in ("2026-03-28T20:00", "2026-10-24T20:00"):
        start = _at(day)
        forward = spec.upcoming(start, count=60)
        for now in range(start + 600, start + 2 * 86400, 1800):
            passed = [d for d in forward if d <= now]
            assert spec.latest(now, start) == (passed[-1] if passed else None), (cron, _local(now))


# -- the Scheduler, on the in-memory transport -------------------------------------------------------------------


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _scheduler(broker: MemoryBroker, clock: _Clock, *tables: dict[str, Any]) -> Scheduler:
    config = _config(*(tables or ({"name": "tick", "group": "main", "type": "tick", "every": 10},)))
    return Scheduler(config, lambda _config: MemoryOutbox(broker), clock=clock)


def _published(broker: MemoryBroker) -> list[str]:
    return [name.removesuffix(".json") for name, _data in broker.queue("main").values()]


def test_each_due_time_is_published_once_and_the_loop_waits_for_the_next():
    broker, clock = MemoryBroker(), _Clock(1003.0)
    scheduler = _scheduler(broker, clock)
    assert scheduler.publish_due(clock.now) == []  # first sight: recorded, nothing due yet
    assert scheduler.next_due() == 1010.0
    assert scheduler.wait(0.25) == 0.25
    clock.now = 1009.9
    assert scheduler.wait(0.25) == pytest.approx(0.1)
    clock.now = 1010.5
    assert scheduler.wait(0.25) == 0.0  # due: the timers publish it next
    assert scheduler.wait(0.25) == 0.25  # still not published (a drain does not): the loop never spins
    clock.now = 1010.0
    assert scheduler.publish_due(clock.now) == ["schedule-tick-19700101T001650Z"]
    assert scheduler.wait(0.25) == 0.25
    assert scheduler.publish_due(clock.now) == []
    clock.now = 1020.5
    scheduler.publish_due(clock.now)
    assert _published(broker) == ["schedule-tick-19700101T001650Z", "schedule-tick-19700101T001700Z"]
    assert broker.schedules["tick"]["due"] == 1020
    message = json.loads(next(iter(broker.queue("main").values()))[1])
    assert message["requiresAck"] is True and message["timestamp"] == "1970-01-01T00:16:50.000Z"
    assert message["schedule"] == {"name": "tick", "due": "1970-01-01T00:16:50+00:00"}


@pytest.mark.parametrize(("missed", "expected"), [("once", ["schedule-tick-19700101T002000Z"]), ("skip", [])])
def test_after_downtime_once_publishes_the_latest_missed_due_time_and_skip_none(missed, expected):
    broker, clock = MemoryBroker(), _Clock(1003.0)
    table = {"name": "tick", "group": "main", "type": "tick", "every": 10, "missed": missed}
    _scheduler(broker, clock, table).publish_due(clock.now)
    clock.now = 1205.0  # down from 1003 to 1205: 1010 ... 1200 passed
    restarted = _scheduler(broker, clock, table)
    assert restarted.publish_due(clock.now) == expected
    assert restarted.publish_due(clock.now) == []
    clock.now = 1210.0
    assert restarted.publish_due(clock.now) == ["schedule-tick-19700101T002010Z"]


def test_a_schedule_publishes_its_type_and_payload_into_its_group():
    broker, clock = MemoryBroker(), _Clock(1003.0)
    scheduler = _scheduler(broker, clock, {"name": "digest", "group": "reports", "type": "report", "every": 10,
                                           "payload": {"kind": "daily", "to": ["ops"]}})
    scheduler.publish_due(clock.now)
    clock.now = 1010.0
    assert scheduler.publish_due(clock.now) == ["schedule-digest-19700101T001650Z"]
    assert broker.queue("main") == {}
    ((name, data),) = broker.queue("reports").values()
    message = json.loads(data)
    assert (name, message["groupFolder"], message["type"], message["payload"]) == \
        ("schedule-digest-19700101T001650Z.json", "reports", "report", {"kind": "daily", "to": ["ops"]})


def test_a_due_time_lost_before_the_first_publish_is_published_at_the_next_start():
    """The first sight is recorded: a supervisor killed before it published anything still leaves a start."""
    broker, clock = MemoryBroker(), _Clock(1003.0)
    _scheduler(broker, clock).publish_due(clock.now)
    clock.now = 1015.0
    assert _scheduler(broker, clock).publish_due(clock.now) == ["schedule-tick-19700101T001650Z"]


def test_two_schedulers_on_one_transport_publish_each_due_time_once_between_them():
    broker, clock = MemoryBroker(), _Clock(1003.0)
    a, b = _scheduler(broker, clock), _scheduler(broker, clock)
    for now in (1003.0, 1010.0, 1010.5, 1020.0, 1031.0):
        clock.now = now
        a.publish_due(now)
        b.publish_due(now)
    assert _published(broker) == [f"schedule-tick-19700101T00{t}Z" for t in ("1650", "1700", "1710")]


def test_a_reload_that_changes_a_schedule_starts_it_from_now():
    broker, clock = MemoryBroker(), _Clock(1003.0)
    scheduler = _scheduler(broker, clock)
    scheduler.publish_due(clock.now)
    clock.now = 1095.0
    changed = _config({"name": "tick", "group": "main", "type": "tick", "every": 60}).schedules
    assert scheduler.publish_due(clock.now, changed) == []  # 1020 ... 1080 of the new timetable: not caught up
    clock.now = 1140.0
    assert scheduler.publish_due(clock.now, changed) == ["schedule-tick-19700101T001900Z"]


def test_on_the_spool_a_due_time_published_but_not_recorded_is_not_published_again(tmp_path):
    """SIGKILL between the message and its record: at the next start the message is found under its id
    (queued, or acked once handled) and not published a second time."""
    from ipcpool.transport import make_outbox

    config = _config({"name": "tick", "group": "main", "type": "tick", "every": 10},
                     spool={"root": str(tmp_path / "ipc")})
    spec = config.schedules[0]
    data = json.dumps(spec.envelope(1010)).encode()
    outbox = make_outbox(config)
    try:
        outbox.publish("main", f"{spec.message_id(1010)}.json", data)  # the message, then the SIGKILL
        assert outbox.publish_due("tick", 1010, "main", f"{spec.message_id(1010)}.json", data, {"at": 1.0}) is False
        assert outbox.schedule_marks(["tick"])["tick"]["due"] == 1010
        assert outbox.publish_due("tick", 1010, "main", f"{spec.message_id(1010)}.json", data, {"at": 1.0}) is False
        # handled and acked, then killed before the record: still not published again
        (tmp_path / "ipc" / "main" / "messages" / f"{spec.message_id(1020)}.json").unlink(missing_ok=True)
        (tmp_path / "ipc" / "main" / "acks" / f"{spec.message_id(1020)}.ack").write_text("")
        assert outbox.publish_due("tick", 1020, "main", f"{spec.message_id(1020)}.json", data, {"at": 2.0}) is False
        assert sorted(p.name for p in (tmp_path / "ipc" / "main" / "messages").iterdir()) == \
            [f"{spec.message_id(1010)}.json"]
    finally:
        outbox.close()


# -- real supervisors, both transports ---------------------------------------------------------------------------


def _write(tmp_path: Path, root: Path, backend: dict[str, dict[str, Any]], *, missed: str = "once",
           name: str = "c.toml", extra: str = "") -> Path:
    path = write_config(tmp_path / name, root, sections={k: dict(v) for k, v in backend.items()},
                        handlers={"tick": "recorder:record"})
    path.write_text(path.read_text() + f'\n[[schedule]]\nname = "tick"\ngroup = "main"\ntype = "tick"\n'
                    f'every = 1\nmissed = "{missed}"\npayload = {{ note = "from the timetable" }}\n{extra}')
    return path


def _dues(tmp_path: Path) -> list[int]:
    """The due times the handlers ran, from the ids (schedule-tick-YYYYmmddTHHMMSSZ)."""
    out = []
    for record in records(tmp_path):
        stamp = record["id"].rsplit("-", 1)[1]
        out.append(int(dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()))
    return out


def _published_ids(*logs: str) -> list[str]:
    return re.findall(r"schedule tick published id=(\S+)", "".join(logs))


def _iso(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp())


def test_a_supervisor_publishes_each_due_time_once_and_shows_them(tmp_path, root, env, backend, supervisor_factory):
    config = _write(tmp_path, root, backend, extra='\n[[schedule]]\nname = "digest"\ngroup = "main"\ntype = "tick"\n'
                                                  'cron = "30 2 * * *"\ntimezone = "Europe/Berlin"\n')
    never_ran = json.loads(run_cli(env, tmp_path, "status", "--config", str(config), "--json").stdout)
    assert [(s["name"], len(s["next"]), s["lastPublished"]) for s in never_ran["schedules"]] == \
        [("tick", 3, None), ("digest", 3, None)], "status --json shows the schedules with no supervisor ever run"
    sup = supervisor_factory(config)
    wait_until(lambda: len(records(tmp_path)) >= 3, 20, message="three due times handled")
    listed = json.loads(run_cli(env, tmp_path, "schedule", "list", "--config", str(config), "--json").stdout)
    written = wait_until(lambda: (st := sup.status()) and st.get("schedules", [{}])[0].get("lastPublished") and st,
                         10, message="the supervisor's status.json shows the schedules")
    sup.stop()
    status = json.loads(run_cli(env, tmp_path, "status", "--config", str(config), "--json").stdout)  # none running
    seen = records(tmp_path)
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)) >= 3, ids
    assert all(r["payload"] == {"note": "from the timetable"} and r["extra"]["schedule"]["name"] == "tick"
               for r in seen)
    assert sorted(_published_ids(sup.log())) == sorted(ids)
    for shown in (listed, status["schedules"], written["schedules"]):
        tick, digest = shown
        assert tick["name"] == "tick" and tick["every"] == 1 and tick["missed"] == "once"
        assert tick["lastPublished"]["id"] in ids
        assert [_iso(t) for t in tick["next"]] == [_iso(tick["next"][0]) + i for i in range(3)]
        assert digest["lastPublished"] is None and digest["timezone"] == "Europe/Berlin"
        assert len(digest["next"]) == 3 and all(re.fullmatch(r"\S+T02:30:00\+0[12]:00", t) for t in digest["next"])
    table = run_cli(env, tmp_path, "schedule", "list", "--config", str(config)).stdout
    assert 'digest: tick to main, cron "30 2 * * *" (Europe/Berlin), missed = "once"' in table
    assert f"(id {ids[-1]}" in table


@pytest.mark.parametrize("missed", ["once", "skip"])
def test_after_a_sigkill_a_restart_publishes_no_due_time_twice(tmp_path, root, env, backend, supervisor_factory,
                                                               missed):
    """Killed at any moment (here: while due times come every second), then down for more than two due times:
    nothing is handled twice; missed = "once" publishes only the latest missed due time, "skip" none."""
    config = _write(tmp_path, root, backend, missed=missed)
    sup = supervisor_factory(config)
    wait_until(lambda: len(records(tmp_path)) >= 2, 20, message="two due times handled")
    sup.signal(signal.SIGKILL)
    sup.wait(10)
    killed_at = time.time()
    first_log = sup.log()
    last = json.loads(run_cli(env, tmp_path, "schedule", "list", "--config", str(config), "--json").stdout)[0]
    recorded = _iso(last["lastPublished"]["due"])
    wait_until(lambda: time.time() >= killed_at + 2.2, 10, message="two due times missed")
    restarted_at = time.time()
    again = supervisor_factory(config)
    wait_until(lambda: any(d > restarted_at + 1 for d in _dues(tmp_path)), 20, message="due times after the restart")
    again.stop()
    ids = [r["id"] for r in records(tmp_path)]
    assert [i for i, n in Counter(ids).items() if n > 1] == [], "a due time handled twice"
    published = _published_ids(first_log, again.log_since_start())
    assert [i for i, n in Counter(published).items() if n > 1] == [], "a due time published twice"
    after = sorted(d for d in _dues(tmp_path) if d > recorded)
    missed_ones = [d for d in after if d <= restarted_at]
    catch_up = re.findall(r"due=(\S+) \(the latest due time missed while no supervisor ran\)",
                          again.log_since_start())
    if missed == "once":
        assert len(catch_up) == 1, again.log_since_start()
        assert after[0] == _iso(catch_up[0]) >= int(restarted_at), (after, restarted_at)
        assert missed_ones in ([], [after[0]])  # only the latest (its second may be the restart's own)
    else:
        assert catch_up == [] and "skipped due times missed while no supervisor ran" in again.log_since_start()
        assert missed_ones == []
    assert after[0] >= recorded + 2, "the due times of the downtime were not all published"


def test_a_due_time_handled_before_a_sigkill_but_not_recorded_is_not_published_again(tmp_path, root, env, backend,
                                                                                   supervisor_factory):
    """The state a SIGKILL between a message and its record leaves (on the spool; on Redis, a hash restored from
    an older snapshot than the ledger): the last due time recorded is an earlier one, the latest missed one is
    acked. The restart records it, and neither publishes nor handles it again."""
    config = _write(tmp_path, root, backend).read_text().replace("every = 1\n", "every = 30\n")
    (tmp_path / "c.toml").write_text(config)
    # A due time D with room before the next one (a restart must fall in the same 30 s).
    wait_until(lambda: 1 <= time.time() % 30 <= 20, 20, message="a moment early in a 30 s period")
    due = int(time.time() // 30 * 30)
    spec = load_config(tmp_path / "c.toml").schedules[0]
    acked = spec.message_id(due)
    if backend:
        import redis

        prefix = backend["redis"]["prefix"]
        client = redis.Redis.from_url(backend["redis"]["url"])
        client.hset(f"{prefix}:schedule:tick", mapping={"since": due - 90, "due": due - 30, "id": "earlier"})
        client.set(f"{prefix}:ack:main:{acked}", "1", ex=3600)
        client.close()
    else:
        (root / "main" / "acks").mkdir(parents=True)
        (root / "main" / "acks" / f"{acked}.ack").write_text("")
        (root / ".ipcpool").mkdir(exist_ok=True)
        (root / ".ipcpool" / "schedules.json").write_text(json.dumps({"tick": {"since": due - 90, "due": due - 30}}))
    sup = supervisor_factory(tmp_path / "c.toml")

    def recorded() -> str | None:
        out = run_cli(env, tmp_path, "schedule", "list", "--config", str(tmp_path / "c.toml"), "--json").stdout
        return (json.loads(out)[0]["lastPublished"] or {}).get("id")

    wait_until(lambda: recorded() == acked, 20, interval=0.2, message="the acked due time recorded")
    sup.stop()
    assert acked not in _published_ids(sup.log()), "published again"
    assert [r["id"] for r in records(tmp_path)] == [], "handled again"


def test_supervisors_sharing_one_redis_publish_each_due_time_once(tmp_path, env, private_redis):
    """Three supervisors (each a host with its own root) on one private redis-server: every due time is
    published once between them and handled once."""
    backend = {"transport": {"backend": "redis"}, "redis": {"url": private_redis.url, "prefix": "beat"}}
    hosts: list[SupervisorProcess] = []
    try:
        for name in ("a", "b", "c"):
            config = _write(tmp_path, tmp_path / name / "ipc", backend, name=f"{name}.toml")
            hosts.append(SupervisorProcess(config, tmp_path, env, tmp_path / f"{name}.log").start())
        all_up = time.time()
        wait_until(lambda: sum(d > all_up for d in _dues(tmp_path)) >= 4, 30, message="four due times, all up")
    finally:
        for sup in hosts:
            sup.stop()
    ids = [r["id"] for r in records(tmp_path)]
    assert [i for i, n in Counter(ids).items() if n > 1] == [], "a due time handled twice"
    published = _published_ids(*(sup.log() for sup in hosts))
    assert sorted(published) == sorted(ids), "each due time published once, by one of them"
    assert len(set(_dues(tmp_path))) >= 4


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_bad_schedule_stops_check_and_run_with_exit_2(tmp_path, root, env, backend, command):
    config = write_config(tmp_path / "c.toml", root, sections={k: dict(v) for k, v in backend.items()},
                          handlers={"tick": "recorder:record"})
    config.write_text(config.read_text() + '\n[[schedule]]\nname = "digest"\ngroup = "main"\ntype = "tick"\n'
                                           'cron = "61 * * * *"\n')
    result = run_cli(env, tmp_path, command, "--config", str(config))
    assert result.returncode == 2, result
    assert f'{config}: [[schedule]] name="digest": cron "61 * * * *": minute must be 0-59' in result.stderr
    assert not (root / ".ipcpool" / "lock").exists()


def test_the_supervisors_loop_never_waits_out_a_redis_outage():
    """A sender retries for [redis] outage_timeout; the scheduler, in the supervisor's loop, tries once and
    comes back a second later (the due time is kept)."""
    from ipcpool.transport import make_outbox

    config = _config({"name": "tick", "group": "main", "type": "tick", "every": 10},
                     transport={"backend": "redis"}, redis={"url": "redis://127.0.0.1:9/0", "outage_timeout": 60.0})
    clock = _Clock(1003.0)
    scheduler = Scheduler(config, make_outbox, clock=clock)
    started = time.monotonic()
    try:
        assert scheduler.publish_due(clock.now) == []
    finally:
        scheduler.close()
    assert time.monotonic() - started < 10, "waited out the outage in the loop"
    assert scheduler.next_due() == 1004.0  # tried again in a second
