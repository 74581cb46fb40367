"""Documented config keys and environment variables, as real processes use them.

Each test sets a key to a value its default would not give, runs the real
``ipcpool run`` / ``ipcpool send`` / ``ipcpool status``, and checks the effect
from the outside: files on disk, exit codes, log lines, status.json, and (for
``durability = "power"``) the fsync system calls themselves, seen with strace.
Timings are only ever lower bounds (a retry never comes before its delay);
anything that must not happen is shown by a state the test controls.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from conftest import acked, files, kill_session, records, require_tool, run_cli, wait_until, write_config

from ipcpool import Client
from ipcpool.ops.health import judge

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
CLOCK_SLACK = 0.005  # log timestamps are truncated to the millisecond


def _log_time(line: str) -> float:
    match = LOG_TIME.match(line)
    assert match, line
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _lines(text: str, phrase: str) -> list[str]:
    return [line for line in text.splitlines() if phrase in line]


# -- [spool] format --------------------------------------------------------------------------------


def test_spool_format_is_what_senders_write(tmp_path, root, env, supervisor_factory):
    """[spool] format = "msgpack": `ipcpool send` and Client.from_config write msgpack; both formats are read."""
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"format": "msgpack"}})
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "main", "--type", "task",
                  "--payload", '{"n": 1}')
    assert out.returncode == 0, out.stderr
    cli_id = out.stdout.strip()
    landed = root / "main" / "messages" / f"{cli_id}.msgpack"
    assert landed.exists(), files(root, "main", "messages")
    assert msgpack.unpackb(landed.read_bytes())["payload"] == {"n": 1}
    with Client.from_config(config) as client:
        client_id = client.send("main", "task", {"n": 2})
        json_id = client.send("main", "task", {"n": 3}, format="json")  # a per-message override still works
    assert files(root, "main", "messages") == sorted([f"{cli_id}.msgpack", f"{client_id}.msgpack",
                                                      f"{json_id}.json"])
    sup = supervisor_factory(config)
    wait_until(lambda: len(records(tmp_path)) == 3, 20, message="all three handled")
    assert sorted(r["id"] for r in records(tmp_path)) == sorted([cli_id, client_id, json_id])
    assert sup.stop() == 0


# -- [spool] durability = "power": fsync file, then folder -------------------------------------------------


def _traced_run(tmp_path: Path, env: dict[str, str], config: Path, trace: Path) -> tuple[subprocess.Popen[bytes],
                                                                                         int, Path]:
    """`ipcpool run` under strace, following every process it starts (forkserver, workers).

    ``-ff``: one trace file per process (``<trace>.<pid>``), so concurrent calls in
    two workers are never split into "unfinished" and "resumed" halves.
    """
    require_tool("strace", shutil.which("strace"), "Debian: apt-get install strace")
    log_path = tmp_path / "supervisor.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller's process end
    command = ["strace", "-ff", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-e", "signal=none", "-o", str(trace),
               sys.executable, "-m", "ipcpool", "run", "--config", str(config)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        started = wait_until(lambda: _STARTED.search(log_path.read_text()) or proc.poll() is not None, 60,
                             message="the traced pool ready")
        assert proc.poll() is None, log_path.read_text()
    except BaseException:
        kill_session(proc.pid)
        proc.wait(10)
        raise
    return proc, int(started.group(1)), log_path  # the supervisor's pid, from its own log line


_STARTED = re.compile(r"\[(\d+)\] ipcpool\.pool\.supervisor: Enhanced IPC system started")
_FSYNC = re.compile(r"^f(?:data)?sync\(\d+<(.*)>\)\s+=\s+0")


@pytest.mark.parametrize("durability", ["process", "power"])
def test_power_durability_fsyncs_the_file_then_its_folder(tmp_path, root, env, durability):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"durability": durability}},
                          handlers={"task": "recorder:record"})
    trace = tmp_path / "fsync.trace"
    proc, supervisor, log_path = _traced_run(tmp_path, env, config, trace)
    try:
        with Client(root, "main") as client:  # an untraced sender: only the pool's own fsyncs are counted
            assert client.request("main", "task", {"result": 1}, timeout=30) == 1  # a response
            acked_id = client.send("main", "task", {"n": 1}, requires_ack=True)  # an ack
            failed_id = client.send("main", "task", {"raise": "boom"})  # an error record and a move to errors/
        wait_until(lambda: acked(root, [acked_id]), 30, message="the ack")
        wait_until(lambda: any(n.endswith(".error.json") for n in files(root, "main", "errors"))
                   and not files(root, "main", "processing"), 30, message=f"{failed_id} in errors/")
        os.kill(supervisor, signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.wait(10)
    calls = [(int(part.name.rsplit(".", 1)[1]), m.group(1)) for part in sorted(tmp_path.glob(f"{trace.name}.*"))
             for line in part.read_text().splitlines() if (m := _FSYNC.match(line))]
    assert any(part.name.endswith(f".{supervisor}") for part in tmp_path.glob(f"{trace.name}.*")), "traced"
    spool_calls = [(pid, path) for pid, path in calls if path.startswith(str(root))]
    if durability == "process":
        assert spool_calls == [], "durability = process: rename only, no fsync"
        return
    folders = {path for _pid, path in spool_calls if os.path.isdir(path)}
    for sub in ("acks", "responses", "errors"):
        assert str(root / "main" / sub) in folders, f"no fsync of {sub}/ after a rename into it: {sorted(folders)}"
    # "fsync file, then folder": each folder fsync follows a file fsync in the same process
    for i, (pid, path) in enumerate(spool_calls):
        if path == str(root / "main" / "acks"):
            earlier_files = [p for q, p in spool_calls[:i] if q == pid and not os.path.isdir(p)]
            assert earlier_files, f"acks/ fsynced by pid {pid} before any file of its"
            break


def test_power_durability_fsyncs_ack_holds_and_delivery_records(tmp_path, root, env, immutable):
    """What the pool relies on after a crash is on disk before it is relied on: the record of a delivery
    that killed a worker (the poison count), and processing/.ack-<id> (a handled message whose ack
    could not be written: the proof that it must not run again)."""
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record"},
                          sections={"spool": {"durability": "power"}, "pool": {"workers": 1, "max_deliveries": 2}})
    trace = tmp_path / "fsync.trace"
    proc, supervisor, log_path = _traced_run(tmp_path, env, config, trace)
    deliveries = root / ".ipcpool" / "deliveries" / "main"
    try:
        with Client(root, "main") as client:
            client.send("main", "task", {"exit": 9})  # kills its worker: one delivery recorded, then poison
            wait_until(lambda: any(n.endswith(".error.json") for n in files(root, "main", "errors")), 60,
                       message="the killer recorded, then quarantined as poison")
            immutable(root / "main" / "acks")
            held = client.send("main", "task", {"n": 1}, requires_ack=True)
            wait_until(lambda: (root / "main" / "processing" / f".ack-{held}").exists(), 30,
                       message="the handled message held for its ack")
            immutable(root / "main" / "acks", on=False)
            wait_until(lambda: acked(root, [held]), 30, message="the held ack written once acks/ takes it")
        os.kill(supervisor, signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.wait(10)
    synced = [m.group(1) for part in tmp_path.glob(f"{trace.name}.*")
              for line in part.read_text().splitlines() if (m := _FSYNC.match(line))]
    assert str(root / "main" / "processing") in synced, "the .ack-<id> rename was not fsynced"
    assert str(deliveries) in synced, "the delivery record's folder was not fsynced"
    assert any(path.startswith(f"{deliveries}/") for path in synced), "the delivery record was not fsynced"


# -- [pool] max_boot_failures ------------------------------------------------------------------------------


def test_max_boot_failures_is_the_number_of_boots_tried(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "boot_counter:handle"},
                          sections={"pool": {"workers": 1, "max_boot_failures": 4}})
    sup = supervisor_factory(config, wait_ready=False)
    assert sup.wait(60) == 3, sup.log()
    attempts = (tmp_path / "records" / "boot-attempts.txt").read_text().split()
    assert len(attempts) == 4, attempts
    assert len(set(attempts)) == 4, "each attempt a new worker process"
    assert "failure 4 of 4" in sup.log() and "failure 5" not in sup.log()


def test_boot_failures_count_only_in_a_row(tmp_path, root, supervisor_factory):
    """A worker that boots resets the count: one failure now and one later never add up to the limit."""
    tokens = tmp_path / "records" / "boot-fail-tokens"
    tokens.mkdir()
    (tokens / "first").touch()
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "boot_tokens:record"},
                          sections={"pool": {"workers": 1, "max_boot_failures": 2}})
    sup = supervisor_factory(config)  # one failed boot, then a good one
    assert "failure 1 of 2" in sup.log()
    (worker,) = wait_until(lambda: [w["pid"] for w in (sup.status() or {}).get("workers", [])
                                    if w["state"] in ("ready", "busy")], 20, message="the good worker in status.json")
    (tokens / "second").touch()
    os.kill(worker, signal.SIGKILL)  # its replacement fails once, the next one boots
    wait_until(lambda: not (tokens / "second").exists(), 20, message="the second failing boot")
    with Client(root, "main") as client:
        message_id = client.send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: acked(root, [message_id]), 30, message="a message handled after both failures")
    assert sup.proc is not None and sup.proc.poll() is None, "two failures, not in a row, must not halt"
    assert sup.log().count("failure 1 of 2") == 2 and "failure 2 of 2" not in sup.log()
    assert sup.stop() == 0


# -- [retry] delay / backoff / max_delay in a real worker ------------------------------------------------------


def test_handler_retries_back_off_by_the_factor_up_to_max_delay(tmp_path, root, supervisor_factory):
    waits = [0.2, 0.6, 1.0, 1.0]  # delay 0.2, x3 each time, capped at 1.0
    config = write_config(tmp_path / "c.toml", root, sections={"retry": {"attempts": 5, "delay": 0.2,
                                                                         "backoff": 3.0, "max_delay": 1.0}})
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        message_id = client.send("main", "task", {"raise": "always"})
    wait_until(lambda: any(n.endswith(".error.json") for n in files(root, "main", "errors")), 30,
               message="the message in errors/ after its last attempt")
    for attempt, wait in enumerate(waits, 1):
        assert f"IPC handler failed (attempt {attempt}), retrying in {wait:.2f}s id={message_id}" in sup.log()
    at = sorted(r["at"] for r in records(tmp_path))
    assert len(at) == 5
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert all(gap >= wait - CLOCK_SLACK for gap, wait in zip(gaps, waits, strict=True)), (gaps, waits)
    assert sup.stop() == 0


# -- [ack] timeout / retry_delay / backoff in a real sender ------------------------------------------------


def test_a_real_sender_backs_off_between_ack_attempts(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"ack": {"timeout": 0.2, "max_retries": 2,
                                                                       "retry_delay": 0.3, "backoff": 4.0}})
    sup = supervisor_factory(config)  # running (with no supervisor the first time-out ends the wait)
    gate = tmp_path / "gate"
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "main", "--type", "task", "--ack",
                  "--payload", json.dumps({"gate": str(gate)}), timeout=30)  # held in its handler: no ack comes
    gate.touch()
    assert sup.stop() == 0
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "3 attempt(s) of 0.2s" in out.stderr
    sent = _lines(out.stderr, "IPC message sent")
    timeouts = _lines(out.stderr, "ACK timeout id=")
    retries = _lines(out.stderr, "Retrying IPC message")
    assert len(sent) == 1 and len(timeouts) == 3 and len(retries) == 2, out.stderr
    t_sent, t_out, t_retry = _log_time(sent[0]), [_log_time(x) for x in timeouts], [_log_time(x) for x in retries]
    assert t_out[0] - t_sent >= 0.2 - CLOCK_SLACK, "an attempt waits [ack] timeout"
    assert t_retry[0] - t_out[0] >= 0.3 - CLOCK_SLACK, "then retry_delay"
    assert t_retry[1] - t_out[1] >= 0.3 * 4.0 - CLOCK_SLACK, "then retry_delay x backoff"


# -- log phrases ---------------------------------------------------------------------------------------


def test_the_original_log_phrases(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "main", "--type", "task", "--ack",
                  "--timeout", "30", timeout=120)
    assert out.returncode == 0, out.stderr
    message_id = out.stdout.strip()
    assert _lines(out.stderr, f"IPC message sent id={message_id}"), out.stderr
    assert _lines(out.stderr, f"ACK received id={message_id}"), out.stderr
    assert "IPC watcher setup for group main" in sup.log()
    assert "Enhanced IPC system started" in sup.log()
    assert sup.stop() == 0


# -- LOG_LEVEL ------------------------------------------------------------------------------------------------


def test_log_level_debug_shows_debug_lines_from_every_process(tmp_path, root, env, supervisor_factory):
    env["LOG_LEVEL"] = "debug"
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        message_id = client.send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: acked(root, [message_id]), 20, message="the ack")
    log = sup.log()
    assert _lines(log, f"DEBUG [{sup.pid}] ipcpool.pool.handle: spawned worker"), "the supervisor's debug lines"
    (processing,) = wait_until(lambda: _lines(sup.log(), f"Processing IPC message id={message_id}"), 20,
                               message="the worker's debug line")
    assert " DEBUG [" in processing and f"[{sup.pid}]" not in processing, "from the worker process"
    assert sup.stop() == 0


def test_log_level_warning_hides_info(tmp_path, root, env, supervisor_factory):
    env["LOG_LEVEL"] = "warning"
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config, wait_ready=False)  # its "started" line is info: not shown
    wait_until(lambda: judge(sup.status()).healthy, 30, message="a healthy pool")
    with Client(root, "main") as client:
        good = client.send("main", "task", {"n": 1}, requires_ack=True)
        client.send("main", "mystery", {"n": 2})  # rejected: a warning, from a worker
    wait_until(lambda: acked(root, [good]), 20, message="the ack")
    wait_until(lambda: _lines(sup.log(), "IPC message rejected"), 20, message="the rejection's warning")
    assert sup.stop() == 0
    log = sup.log()
    assert " WARNING [" in log
    assert " INFO [" not in log and " DEBUG [" not in log, log


# -- IPCPOOL_ROOT and [spool] groups -------------------------------------------------------------------------


def test_ipcpool_root_overrides_the_configured_root_and_groups_are_made_at_start(tmp_path, env, supervisor_factory):
    configured, override = tmp_path / "configured", tmp_path / "override"
    config = write_config(tmp_path / "c.toml", configured, groups=["main", "extra"])
    env["IPCPOOL_ROOT"] = str(override)
    sup = supervisor_factory(config)
    assert (override / "extra" / "messages").is_dir(), "[spool] groups are created at start"
    with Client(override, "main") as client:
        message_id = client.send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: acked(override, [message_id]), 20, message="the ack under IPCPOOL_ROOT")
    assert not configured.exists(), "the configured root is not used"
    assert sup.stop() == 0


# -- ipcpool status --------------------------------------------------------------------------------------------


def test_status_shows_a_running_pool_as_a_table_and_as_json(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 3}})
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(2)]
    wait_until(lambda: acked(root, ids), 20, message="two acks")
    table = wait_until(lambda: (o := run_cli(env, tmp_path, "status", "--config", str(config)))
                       and "handled 2" in o.stdout and o, 30, message="a status table counting both")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"supervisor pid {sup.pid}  state running"), lines[0]
    assert lines[1].startswith("health: OK"), lines[1]
    workers = sup.worker_pids()
    assert len(workers) == 3
    for pid in workers:
        assert any(line.split()[:1] == [str(pid)] for line in lines), f"no row for worker {pid}"
    assert any(line.split()[:1] == ["main"] for line in lines), "no row for group main"
    assert lines[-1].startswith("totals: ") and "handled 2" in lines[-1]

    out = run_cli(env, tmp_path, "status", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["state"] == "running" and status["supervisor"]["pid"] == sup.pid
    assert sorted(w["pid"] for w in status["workers"]) == sorted(workers)
    assert status["totals"]["handled"] == 2 and "main" in status["groups"]
    assert sup.stop() == 0

    stopped = run_cli(env, tmp_path, "status", "--config", str(config))
    assert stopped.returncode == 1, "a stopped pool is not healthy"
    assert "state stopped" in stopped.stdout
