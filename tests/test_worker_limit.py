"""A worker's own handler limit: with its supervisor stopped (SIGSTOP, a frozen host) it still ends a handler.

The supervisor times handlers out, but a stopped supervisor is not gone, so its workers' orphan exit never
fires. Each worker ends itself past ``handler_timeout + kill_grace + WORKER_LIMIT_MARGIN`` (exit
EXIT_WORKER_OVERTIME); the supervisor, continued, counts that as its own timeout kill. On Redis this is what
keeps a sequence's order across supervisors through a frozen one (docs/redis.md).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psutil
import redis
from conftest import SupervisorProcess, files, wait_until, write_config
from test_ordering import check_sequences, runs

from ipcpool import Client
from ipcpool.errors import EXIT_WORKER_OVERTIME

HANDLERS = {"task": "sequence:run"}
LIMITS = {"handler_timeout": 1.0, "kill_grace": 0.5, "workers": 1, "max_deliveries": 2}


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its stopped parent cannot reap yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def _starts(records: Path, n: int) -> list[dict[str, Any]]:
    return [line for line in runs(str(records)) if line["ev"] == "start" and line["n"] == n]


def test_a_stopped_supervisors_worker_ends_an_overlong_handler_itself_and_the_message_ends_once(
        tmp_path, root, supervisor_factory):
    cfg = write_config(tmp_path / "c.toml", root, handlers=HANDLERS, sections={"pool": LIMITS})
    sup = supervisor_factory(cfg)
    records = tmp_path / "records"
    with Client.from_config(cfg) as client:
        message_id = client.send("main", "task", {"key": "k", "n": 0, "work": 60})
    first = wait_until(lambda: _starts(records, 0), 20, message="the handler started")[0]
    sup.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: _stopped(sup.pid), 10, message="the supervisor stopped")
        wait_until(lambda: _gone(first["pid"]), 15, message="the worker ending itself")
        assert _stopped(sup.pid), "the worker ended while its supervisor was still stopped"
    finally:
        sup.signal(signal.SIGCONT)
    # Continued: the self-exit is its timeout (delivery 1 of max_deliveries 2), redelivered, killed again, poison.
    wait_until(lambda: files(root, "main", "errors"), 30, message="the message in errors/")
    log = sup.log()
    assert f"worker {first['pid']}: handler ran" in log and f"id={message_id} type=task group=main" in log
    assert f"exits with code {EXIT_WORKER_OVERTIME}" in log
    assert f"worker died pid={first['pid']} slot=0: ended itself after handler_timeout + kill_grace" in log
    assert f"killing worker pid={first['pid']}" not in log, "a worker already gone is reaped, not killed"
    errors = [name for name in files(root, "main", "errors") if name.endswith(".error.json")]
    assert len(errors) == 1, errors
    record = json.loads((root / "main" / "errors" / errors[0]).read_text())
    assert record["id"] == message_id and "poison message: 2 deliveries" in record["reason"]
    assert "ended itself" in record["deliveries"][0]["ended"]
    assert len(_starts(records, 0)) == 2, "delivered again once, after the self-exit"
    assert not [line for line in runs(str(records)) if line["ev"] == "end"], "never handled"
    assert not files(root, "main", "acks")


def test_a_stopped_supervisors_worker_starts_nothing_more_from_its_queue_until_it_runs_again(
        tmp_path, root, supervisor_factory):
    """A message queued in a worker's prefetch does not start while the supervisor is stopped (on Redis its
    lease is not renewed meanwhile); continued, it runs."""
    cfg = write_config(tmp_path / "c.toml", root, handlers=HANDLERS,
                       sections={"pool": {**LIMITS, "handler_timeout": 5.0, "prefetch": 2}})
    records = tmp_path / "records"

    def events(kind: str) -> list[int]:
        return [line["n"] for line in runs(str(records)) if line["ev"] == kind]

    with Client.from_config(cfg) as client:  # either may go first (same mtime: name order)
        for n in (0, 1):
            client.send("main", "task", {"key": "k", "n": n, "work": 2.0})
    sup = supervisor_factory(cfg)
    wait_until(lambda: events("start"), 20, message="the first message started")
    wait_until(lambda: [(w["running"], w["held"]) for w in (sup.status() or {}).get("workers", [])] == [(1, 1)], 20,
               message="the second message in the worker's queue")
    assert not events("end"), "the first still runs"
    sup.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "messages wait here until it does" in sup.log(), 15, message="the worker holding back")
        assert _stopped(sup.pid)
        first = events("start")
        assert len(first) == 1 and events("end") == first, "only the first ran, to its end"
    finally:
        sup.signal(signal.SIGCONT)
    wait_until(lambda: sorted(events("end")) == [0, 1], 20, message="the second handled once the supervisor runs")
    assert "the supervisor runs again; starting what waits here" in sup.log()


def test_on_redis_a_frozen_supervisor_never_runs_a_sequences_head_beside_the_one_that_reclaimed_it(
        tmp_path, env, redis_url, redis_prefix):
    """The review's scenario: message 0 of a key runs long on A, A is stopped, B takes over after the lease
    and runs 1 and 2; A's worker has ended 0 by then, and 0 ends once (dead-lettered, never handled)."""
    # handler_timeout + kill_grace + 1 s + 2 x heartbeat interval = 3 s < lease 4 s: the documented condition.
    sections = {"transport": {"backend": "redis"}, "redis": {"url": redis_url, "prefix": redis_prefix, "lease": 4.0},
                "pool": LIMITS}
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(write_config(tmp_path / name / "c.toml", tmp_path / name / "ipc", handlers=HANDLERS,
                                    sections=sections))
    a = SupervisorProcess(configs[0], tmp_path, env, tmp_path / "a.log").start()
    b = SupervisorProcess(configs[1], tmp_path, env, tmp_path / "b.log")
    records = tmp_path / "records"
    try:
        with Client.from_config(configs[0]) as client:
            head = client.send("main", "task", {"n": 0, "work": 60}, ordering_key="chat")
            first = wait_until(lambda: _starts(records, 0), 20, message="message 0 started on A")[0]
            a.signal(signal.SIGSTOP)
            wait_until(lambda: _stopped(a.pid), 10, message="A stopped")
            b.start()
            for n in (1, 2):
                client.send("main", "task", {"n": n, "work": 0.05}, ordering_key="chat")
            wait_until(lambda: _gone(first["pid"]), 15, message="A's worker ending message 0 itself")
            others = [line for line in runs(str(records)) if line["pid"] != first["pid"]]
            assert not others, f"the key ran elsewhere while A's worker still ran message 0: {others}"
            wait_until(lambda: {1, 2} <= {line["n"] for line in runs(str(records)) if line["ev"] == "end"}, 60,
                       message="B handling 1 and 2")
        a.signal(signal.SIGCONT)
        wait_until(lambda: f"worker died pid={first['pid']}" in a.log(), 20, message="A reaping its worker")
    finally:
        a.signal(signal.SIGCONT)
        for sup in (a, b):
            if sup.proc is not None:
                sup.stop()
    killed = {line["pid"] for line in _starts(records, 0)}  # every run of 0 outlived its limit
    check_sequences(records, {"chat": [1, 2]}, frozenset(killed))
    admin = redis.Redis.from_url(redis_url)
    dead = [json.loads(fields[b"r"]) for _id, fields in admin.xrange(f"{redis_prefix}:dead:main")]
    assert [record["id"] for record in dead] == [head], dead
    assert not [line for line in runs(str(records)) if line["ev"] == "end" and line["n"] == 0], "0 never handled"
    assert "ended itself after handler_timeout + kill_grace" in a.log()


def test_check_and_run_warn_when_an_ordered_redis_setup_cannot_keep_order_through_a_frozen_supervisor(
        tmp_path, root, env):
    """Warned, not refused: the defaults do not meet the condition, and a deployment that ran must still start."""
    from conftest import run_cli

    from ipcpool.config import load_config, ordering_lease_advice

    redis_sections = {"transport": {"backend": "redis"}, "redis": {"url": "redis://127.0.0.1:1/0", "lease": 6.0},
                      "groups.main": {"ordering": "fifo"}}
    tight = write_config(tmp_path / "tight.toml", root, handlers=HANDLERS,
                         sections={**redis_sections, "pool": {**LIMITS, "handler_timeout": 4.0}})
    said = ordering_lease_advice(load_config(tight))
    assert said is not None and "groups main" in said and "4 + 0.5 + 1 + 2 x 0.25 = 6s" in said
    assert "[redis] lease (6s)" in said
    done = run_cli(env, tmp_path, "check", "--config", str(tight))
    assert done.returncode == 0 and said in done.stderr
    fits = write_config(tmp_path / "fits.toml", root, handlers=HANDLERS,
                        sections={**redis_sections, "pool": {**LIMITS, "prefetch": 32}})
    assert ordering_lease_advice(load_config(fits)) is None  # 1 + 0.5 + 1 + 2 x 0.25 = 3s < 6s, prefetch aside
    spool = write_config(tmp_path / "spool.toml", root, handlers=HANDLERS, sections={"pool": {"prefetch": 32}})
    assert ordering_lease_advice(load_config(spool)) is None
